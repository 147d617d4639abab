"""How far an exported artifact's scores drift from the torch fp32 reference, on the same pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A few built-in queries, each against the same mixed pool, so drift, rank correlation and top-k agreement
# can be measured without any dataset. Written for this project (no licensed text).
BUILTIN_QUERIES = (
    "what causes influenza",
    "how do vaccines train the immune system",
    "why does sourdough bread taste sour",
    "what moves stock prices",
    "which city is the capital of France",
    "do antibiotics work against viruses",
)
BUILTIN_DOCUMENTS = (
    "Influenza is an infectious disease caused by influenza viruses that spread through respiratory droplets.",
    "Vaccines expose the immune system to a harmless piece of a pathogen so it can build memory cells.",
    "Sourdough is leavened by wild yeast and lactic acid bacteria, whose acids give the bread its tang.",
    "Share prices move with earnings expectations, interest rates and investor sentiment.",
    "Paris is the capital and most populous city of France.",
    "Antibiotics kill bacteria but have no effect on viral infections such as the flu or a cold.",
    "The common cold is usually caused by rhinoviruses and produces a runny nose and a sore throat.",
    "Typical flu symptoms include sudden fever, muscle aches, chills and exhaustion.",
    "Lyon is a French city known for its cuisine and its silk-weaving history.",
    "Central banks raise interest rates to slow inflation, which often lowers stock valuations.",
    "Baker's yeast ferments sugars into carbon dioxide and ethanol, making dough rise.",
    "Memory B cells persist for years after infection or vaccination and respond quickly on re-exposure.",
)


def builtin_pairs() -> list[tuple[str, str]]:
    return [(q, d) for q in BUILTIN_QUERIES for d in BUILTIN_DOCUMENTS]


def builtin_calibration_pairs(joined: int = 4) -> list[tuple[str, str]]:
    """Each built-in query with the built-in documents joined `joined` at a time (every rotation): texts of an
    abstract's length, which set int8 activation ranges better than the one-sentence documents alone (OpenVINO
    int8 of the built-in model, 10 SciFact dev queries, per-query Spearman against f32: 0.985 against 0.975)."""
    n = len(BUILTIN_DOCUMENTS)
    return [(q, " ".join(BUILTIN_DOCUMENTS[(i + j) % n] for j in range(joined)))
            for q in BUILTIN_QUERIES for i in range(n)]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties), without scipy."""
    def ranks(x):
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        for value in np.unique(x):  # ties share their mean rank
            tied = x == value
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k_agreement(reference: Sequence[float], candidate: Sequence[float], groups: Sequence[Sequence[int]],
                    k: int = 10) -> float:
    """Mean share of each group's (query's) reference top-k that the candidate also puts in its top-k."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    shares = []
    for group in groups:
        group = np.asarray(group)
        kk = min(k, len(group))
        top_ref = set(group[np.argsort(-reference[group], kind="stable")[:kk]].tolist())
        top_cand = set(group[np.argsort(-candidate[group], kind="stable")[:kk]].tolist())
        shares.append(len(top_ref & top_cand) / kk)
    return float(np.mean(shares))


def parity_summary(reference_scores, candidate_scores, groups=None, k: int = 10) -> dict:
    """max |drift|, Spearman and top-k agreement of candidate scores against the reference scores."""
    reference_scores = np.asarray(reference_scores, dtype=np.float64)
    candidate_scores = np.asarray(candidate_scores, dtype=np.float64)
    groups = groups if groups is not None else [list(range(len(reference_scores)))]
    return {
        "pairs": int(len(reference_scores)),
        "max_abs_drift": float(np.abs(reference_scores - candidate_scores).max()),
        "mean_abs_drift": float(np.abs(reference_scores - candidate_scores).mean()),
        "spearman": spearman(reference_scores, candidate_scores),
        f"top{k}_agreement": top_k_agreement(reference_scores, candidate_scores, groups, k),
    }


def groups_by_query(pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, (query, _) in enumerate(pairs):
        groups.setdefault(query, []).append(i)
    return list(groups.values())


def check_parity(model_dir, artifact, pairs=None, device: str = "cpu") -> dict:
    """Score the same pairs with the torch fp32 reference and with the artifact; summarize the drift."""
    from ..reranker import Reranker

    pairs = pairs or builtin_pairs()
    with Reranker(str(model_dir), backend="torch", dtype="float32", device=device) as reference:
        expected = reference.predict(pairs)
    with Reranker(str(artifact), device=device) as candidate:
        got = candidate.predict(pairs)
    return parity_summary(expected, got, groups_by_query(pairs))


def check_beir(model_dir, artifact, data: str, split: str, queries: int, top_k: int) -> dict:
    """nDCG@10 of the reference and of the artifact on the same BM25 candidates of a BEIR sample."""
    from ..evaluation.beir import load_beir, resolve_beir
    from ..evaluation.evaluate import evaluate_reranker
    from ..reranker import Reranker

    beir = load_beir(resolve_beir(data), split)
    out = {}
    for name, path, options in (("torch_fp32", model_dir, {"backend": "torch", "dtype": "float32"}),
                                ("artifact", artifact, {})):
        with Reranker(str(path), **options) as reranker:
            report = evaluate_reranker(beir, reranker, top_k=top_k, max_queries=queries)
        out[name] = report.to_dict()["metrics"]["reranker"]
    out["bm25"] = report.to_dict()["metrics"]["bm25"]
    return out


def beir_calibration_pairs(data: str, split: str = "train", queries: int = 16, seed: int = 0) -> list[tuple[str, str]]:
    """(query, document) pairs to calibrate a quantizer on: `queries` queries of a BEIR split drawn with `seed`,
    each with its BM25 top 3 and one random document (so both relevant-looking and unrelated text set the
    activation ranges). Use a split you do not report: the calibration sees its texts."""
    import random

    from ..evaluation.beir import load_beir, resolve_beir
    from ..evaluation.bm25 import BM25Retriever

    beir = load_beir(resolve_beir(data), split)
    rng = random.Random(seed)
    chosen = sorted(beir.queries)
    rng.shuffle(chosen)
    chosen = chosen[:queries]
    top, _ = BM25Retriever(beir.corpus).retrieve([beir.queries[q] for q in chosen], 3)
    doc_ids = list(beir.corpus)
    return [(beir.queries[q], beir.corpus[d].full_text)
            for q, docs in zip(chosen, top) for d in [*docs, rng.choice(doc_ids)]]
