"""BEIR evaluation: BM25 first stage, optional ProRank reranking of its candidates, metrics side by side."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ProrankError
from ..fusion import fuse_scores
from .beir import BeirData
from .metrics import evaluate_run, metric_label, write_trec_run
from .significance import describe_comparison, paired_comparison

if TYPE_CHECKING:
    from ..reranker import Reranker

MRR_NDCG_K = 10


@dataclass
class Candidate:
    """One first-stage candidate of a query, with its BM25 score and (once reranked) its reranker score."""

    doc_id: str
    bm25_score: float
    rerank_score: float | None = None


@dataclass
class EvalReport:
    """Metrics per system ("bm25", "reranker", ...), with what produced them.

    `candidates[qid]` keeps every query's candidates in BM25 order with both scores, so further systems
    (e.g. a BM25 / reranker score fusion) can be built from it and added with `add_system`.
    """

    dataset: str
    split: str
    top_k: int
    qrels: dict[str, dict[str, int]]
    candidates: dict[str, list[Candidate]]
    corpus_size: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    runs: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    pairs_scored: int = 0
    model: dict | None = None
    instruction: str | None = None
    #: weight and how it was chosen, when a fusion system was added
    fusion: dict | None = None

    @property
    def queries(self) -> int:
        return len(self.qrels)

    @property
    def recall_k(self) -> int:
        return self.top_k

    def add_system(self, name: str, run: dict[str, dict[str, float]]) -> dict[str, float]:
        """Score a run over this report's queries and list it as system `name`; returns its mean metrics."""
        result = evaluate_run(self.qrels, run, k_values=(MRR_NDCG_K,), recall_k=self.recall_k)
        self.runs[name] = run
        self.metrics[name] = result["mean"]
        self.per_query[name] = result["per_query"]
        return result["mean"]

    def to_dict(self, per_query: bool = False) -> dict:
        """JSON-ready summary; per-query values only when asked (they are large)."""
        out = {
            "dataset": self.dataset,
            "split": self.split,
            "top_k": self.top_k,
            "counts": {
                "queries": self.queries,
                "corpus": self.corpus_size,
                "candidates": sum(len(c) for c in self.candidates.values()),
                "pairs_scored": self.pairs_scored,
            },
            "metrics": self.metrics,
            "timing": self.timing,
            "model": self.model,
            "instruction": self.instruction,
        }
        if self.fusion is not None:
            out["fusion"] = self.fusion
        compared = self.compare_with()
        if compared:
            out["vs_bm25"] = compared
        if per_query:
            out["per_query"] = self.per_query
        return out

    def compare_with(self, baseline: str = "bm25", metric: str = f"ndcg@{MRR_NDCG_K}") -> dict[str, dict]:
        """Every other system against `baseline`, query by query (significance.paired_comparison)."""
        if baseline not in self.per_query or not self.qrels:
            return {}
        return {name: paired_comparison(values[metric], self.per_query[baseline][metric])
                for name, values in self.per_query.items() if name != baseline}

    def format_table(self) -> str:
        """An aligned plain-text table, one row per system, with a title line and a timing line."""
        keys = list(next(iter(self.metrics.values()), {}))
        header = ["system"] + [metric_label(k) for k in keys]
        rows = [[name] + [f"{values[k]:.4f}" for k in keys] for name, values in self.metrics.items()]
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        title = (f"{self.dataset} ({self.split}): {self.queries} queries, BM25 top {self.top_k} of "
                 f"{self.corpus_size} documents")
        lines = [title, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
        for name, comparison in self.compare_with().items():
            lines.append(describe_comparison(name, "bm25", metric_label(f"ndcg@{MRR_NDCG_K}"), comparison))
        if self.pairs_scored:
            lines.append(f"reranked {self.pairs_scored} pairs in {self.timing['rerank_s']:.1f} s "
                         f"({self.timing['pairs_per_s']:.1f} pairs/s)")
        return "\n".join(lines)


def _progress(total: int, show: bool | None, desc: str):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if show is None else not show
    return tqdm(total=total, desc=desc, unit="query", disable=disable, file=sys.stderr, leave=False)


def evaluate_reranker(data: BeirData, reranker: Reranker | None = None, top_k: int = 100,
                      max_queries: int | None = None, instruction: str | None = None, batch_size: int | None = None,
                      show_progress: bool | None = None, run_file: str | None = None) -> EvalReport:
    """BM25 top `top_k` candidates for each query of `data`, reranked by `reranker` when given.

    max_queries: only the split's first N queries (qrels file order). run_file: the last system's run
    (the reranker's, else BM25's) is written there in TREC format.
    """
    from .bm25 import BM25Retriever

    if top_k < 1:
        raise ProrankError("top_k must be at least 1")
    if max_queries is not None and max_queries < 1:
        raise ProrankError("max_queries must be at least 1")
    qids = list(data.queries)[:max_queries]

    start = time.perf_counter()
    retriever = BM25Retriever(data.corpus)
    indexed = time.perf_counter()
    doc_lists, score_rows = retriever.retrieve([data.queries[q] for q in qids], top_k)
    retrieved = time.perf_counter()

    report = EvalReport(
        dataset=data.name, split=data.split, top_k=top_k, qrels={q: data.qrels[q] for q in qids},
        candidates={
            qid: [Candidate(d, float(s)) for d, s in zip(docs, scores)]
            for qid, docs, scores in zip(qids, doc_lists, score_rows.tolist())
        },
        corpus_size=len(data.corpus), instruction=instruction,
    )
    report.timing = {"bm25_index_s": indexed - start, "bm25_retrieve_s": retrieved - indexed}
    report.add_system("bm25", {q: {c.doc_id: c.bm25_score for c in cands} for q, cands in report.candidates.items()})

    if reranker is not None:
        before = reranker.describe()
        start = time.perf_counter()
        with _progress(len(qids), show_progress, "reranking") as bar:
            for qid in qids:
                cands = report.candidates[qid]
                if cands:
                    texts = [data.corpus[c.doc_id].full_text for c in cands]
                    ranked = reranker.rank(data.queries[qid], texts,
                                           instruction=instruction, batch_size=batch_size, show_progress_bar=False)
                    for item in ranked:  # corpus_id is the index into `texts`, i.e. into `cands`
                        cands[item["corpus_id"]].rerank_score = item["score"]
                    report.pairs_scored += len(cands)
                bar.update(1)
        elapsed = time.perf_counter() - start
        report.model = reranker.describe(since=before)  # after the reranking: this evaluation's token counts
        report.timing.update(rerank_s=elapsed, pairs_per_s=report.pairs_scored / elapsed if elapsed > 0 else 0.0)
        report.add_system("reranker", {q: {c.doc_id: c.rerank_score for c in cands}
                                       for q, cands in report.candidates.items()})

    if run_file is not None:
        name = list(report.runs)[-1]
        write_trec_run(run_file, report.runs[name], tag="prorank-edge" if name == "reranker" else name)
    return report


# ---- fusion with the first stage -------------------------------------------------------------------------
FUSION_GRID = tuple(round(w / 10, 1) for w in range(11))


def fusion_run(report: EvalReport, weight: float) -> dict[str, dict[str, float]]:
    run = {}
    for qid, cands in report.candidates.items():
        if not cands:
            run[qid] = {}
            continue
        if any(c.rerank_score is None for c in cands):
            raise ProrankError("fusion needs reranker scores; evaluate with a reranker first")
        fused = fuse_scores([c.bm25_score for c in cands], [c.rerank_score for c in cands], weight)
        run[qid] = {c.doc_id: float(s) for c, s in zip(cands, fused)}
    return run


def add_fusion(report: EvalReport, weight: float, name: str = "fusion") -> dict[str, float]:
    """Add the fused system to `report` (its table and JSON) and return its mean metrics."""
    return report.add_system(name, fusion_run(report, weight))


def tune_fusion_weight(report: EvalReport, grid=FUSION_GRID) -> tuple[float, dict[float, float]]:
    """The grid weight with the best nDCG@10 on `report`'s queries (ties: the smaller weight, closer to BM25).

    Call it on a report of the train or dev split, never on the split you report.
    """
    scores = {}
    for weight in grid:
        result = evaluate_run(report.qrels, fusion_run(report, weight), k_values=(MRR_NDCG_K,), recall_k=report.top_k)
        scores[weight] = result["mean"][f"ndcg@{MRR_NDCG_K}"]
    best = max(grid, key=lambda w: (scores[w], -w))
    return best, scores


def weight_to_store(weight: float, grid: dict[float, float]) -> tuple[float | None, str | None]:
    """The tuned weight a model's contract should carry, and why not (or a caution) where it should not.

    A grid where every weight scored alike says nothing (one dev query, or all rankings perfect), and its tie
    rule's pick, 0.0, would make `rerank` keep BM25's order for every scored document without saying so: no
    weight is stored then. A weight of 0.0 that did win is stored, with the caution that it ignores the model.
    """
    if max(grid.values()) - min(grid.values()) < 1e-9:
        return None, (f"every fusion weight ranked the tuning queries alike (nDCG@10 "
                      f"{next(iter(grid.values())):.4f}), so they cannot choose one; tune on more queries")
    if weight == 0.0:
        return 0.0, ("the best fusion weight on the tuning queries is 0.0: fused with it, the model keeps BM25's "
                     "order (it did not improve on BM25 there)")
    return weight, None


def evaluate_with_fusion(data: BeirData, reranker: Reranker, top_k: int = 100, max_queries: int | None = None,
                         instruction: str | None = None, fusion_weight: float | str | None = None,
                         tune_data: BeirData | None = None, tune_queries: int = 50,
                         show_progress: bool | None = None, status=None) -> EvalReport:
    """evaluate_reranker plus BM25 fusion: a given weight, "auto" (tuned on `tune_data`, which must not be the
    evaluated split), or None for the model's own weight where its contract has one (else no fusion)."""
    fusion: dict = {}
    weight = fusion_weight
    if weight == "auto":
        if tune_data is None:
            raise ProrankError("fusion weight 'auto' needs a split to tune on")
        if tune_data.split == data.split:
            raise ProrankError("--tune-split must differ from --split: tuning on the evaluated split "
                               "would overstate the fusion")
        if status:
            status(f"tuning the fusion weight on {tune_queries} {tune_data.split} queries")
        tuning = evaluate_reranker(tune_data, reranker, top_k=top_k, max_queries=tune_queries,
                                   instruction=instruction, show_progress=show_progress)
        weight, grid = tune_fusion_weight(tuning)
        fusion = {"tuned_on": tune_data.split, "tune_queries": tuning.queries,
                  "ndcg@10_by_weight": {str(w): v for w, v in grid.items()}}
        note = weight_to_store(weight, grid)[1]
        if note:  # reported, not acted on: the weight is still the grid's pick
            fusion["note"] = note
            if status:
                status(f"warning: {note}")
    elif weight is None and "fusion_weight" in reranker.contract.extra:
        # The model's own weight (the built-in model's was tuned on SciFact train): fusion is reported beside
        # the reranker alone, never instead of it.
        weight = float(reranker.contract.extra["fusion_weight"])
        fusion = {"from": "model contract"}
    report = evaluate_reranker(data, reranker, top_k=top_k, max_queries=max_queries, instruction=instruction,
                               show_progress=show_progress)
    if weight is not None:
        add_fusion(report, weight)
        report.fusion = {"weight": weight, **fusion}
    return report
