"""Ranking metrics with trec_eval semantics (pytrec_eval), and TREC run files.

A run is {query id: {doc id: score}}; qrels are {query id: {doc id: integer grade}}. As in trec_eval, a run is
ordered by score, descending, with ties broken by doc id, descending.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

from ..errors import InputError, MissingExtraError

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def metric_label(key: str) -> str:
    """Display name of a metric key: ndcg@10 -> nDCG@10."""
    name, _, k = key.partition("@")
    return {"ndcg": "nDCG", "mrr": "MRR", "recall": "Recall"}.get(name, name) + (f"@{k}" if k else "")


def ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """(doc id, score) best first, in trec_eval's order."""
    return sorted(((d, float(s)) for d, s in docs.items()), key=lambda item: (item[1], item[0]), reverse=True)


def _as_ints(values: int | Iterable[int]) -> list[int]:
    values = [values] if isinstance(values, int) else list(values)
    if not values or any(int(v) < 1 for v in values):
        raise ValueError(f"cutoffs must be positive integers, got {values}")
    return sorted({int(v) for v in values})


def evaluate_run(qrels: Qrels, run: Run, k_values: int | Iterable[int] = (10,),
                 recall_k: int | Iterable[int] = (100,)) -> dict:
    """nDCG@k and MRR@k for each k in k_values, Recall@k for each k in recall_k.

    Returns {"mean": {metric: value}, "per_query": {metric: {qid: value}}} with metric keys such as
    "ndcg@10", "mrr@10", "recall@100". Every query of `qrels` counts: one the run lacks scores 0 on all
    metrics; run queries without judgments are ignored.
    """
    try:
        import pytrec_eval
    except ImportError:
        raise MissingExtraError("evaluation metrics", "eval", "pytrec-eval-terrier") from None

    k_values, recall_k = _as_ints(k_values), _as_ints(recall_k)
    # pytrec_eval wants plain dicts of str -> int / float; empty judgment lists would make it fail.
    judged = {str(q): {str(d): int(g) for d, g in docs.items()} for q, docs in qrels.items() if docs}
    scored = {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items()
              if str(q) in judged and docs}

    per_query: dict[str, dict[str, float]] = {}
    measures = {"ndcg_cut." + ",".join(map(str, k_values)), "recall." + ",".join(map(str, recall_k))}
    results = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(scored) if scored else {}
    for k in k_values:
        per_query[f"ndcg@{k}"] = {q: results.get(q, {}).get(f"ndcg_cut_{k}", 0.0) for q in qrels}
    for k in recall_k:
        per_query[f"recall@{k}"] = {q: results.get(q, {}).get(f"recall_{k}", 0.0) for q in qrels}

    # trec_eval's recip_rank has no cutoff: MRR@k is recip_rank over each query's top k only.
    rr_evaluator = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}) if scored else None
    for k in k_values:
        top = {q: dict(ranked(docs)[:k]) for q, docs in scored.items()}
        rr = rr_evaluator.evaluate(top) if rr_evaluator else {}
        per_query[f"mrr@{k}"] = {q: rr.get(q, {}).get("recip_rank", 0.0) for q in qrels}

    order = [f"{m}@{k}" for m in ("ndcg", "mrr") for k in k_values] + [f"recall@{k}" for k in recall_k]
    per_query = {key: per_query[key] for key in order}
    count = len(qrels)
    mean = {key: (sum(values.values()) / count if count else 0.0) for key, values in per_query.items()}
    return {"mean": mean, "per_query": per_query}


def trec_run_fields(raw: bytes, where: str) -> tuple[str, str, float]:
    """(query id, doc id, score) of one TREC run line `qid Q0 docid rank score tag`; a bad line raises naming
    `where` (file:line)."""
    try:
        fields = raw.decode("utf-8").lstrip("\ufeff").split()
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: invalid UTF-8 (byte {exc.start + 1} of the line)") from None
    if len(fields) != 6:
        raise InputError(f"{where}: expected 6 fields (qid Q0 docid rank score tag), got {len(fields)}")
    try:
        score = float(fields[4])
    except ValueError:
        raise InputError(f"{where}: score {fields[4]!r} is not a number") from None
    if not math.isfinite(score):
        raise InputError(f"{where}: score {fields[4]!r} is not finite")
    return fields[0], fields[2], score


def read_trec_run(path: str | os.PathLike) -> Run:
    """A TREC run file as {qid: {docid: score}} (what write_trec_run writes); any bad line raises."""
    run: dict[str, dict[str, float]] = {}
    try:
        stream = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the run file ({exc.strerror})") from None
    with stream:
        for number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            qid, docid, score = trec_run_fields(raw, f"{path}:{number}")
            if docid in run.setdefault(qid, {}):
                raise InputError(f"{path}:{number}: doc {docid!r} appears twice for query {qid!r}")
            run[qid][docid] = score
    return run


def write_trec_run(path: str | os.PathLike, run: Run, tag: str = "prorank-edge") -> int:
    """Write `run` as TREC run lines `qid Q0 docid rank score tag`, best first per query; returns the line count."""
    if not tag or any(c.isspace() for c in tag):
        raise InputError(f"TREC run tag {tag!r}: must be non-empty and without whitespace")
    lines = []
    for qid, docs in run.items():
        for rank, (docid, score) in enumerate(ranked(docs), start=1):
            if any(c.isspace() for c in f"{qid}{docid}") or not qid or not docid:
                raise InputError(f"TREC run: query {qid!r} / doc {docid!r}: ids must be non-empty without whitespace")
            # repr keeps every digit, so reading the file back gives the same order and ties.
            lines.append(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.writelines(lines)
    except OSError as exc:
        raise InputError(f"{path}: cannot write the run file ({exc.strerror})") from None
    return len(lines)
