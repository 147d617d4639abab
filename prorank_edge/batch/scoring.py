"""What a batch worker does with one shard: rank each query's candidates with `rank_documents`, once."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .inputs import QueryTask


@dataclass(frozen=True)
class ScoringSpec:
    """How to load the model and score; picklable, so each worker process or Ray actor builds its own Reranker."""

    model: str | None = None
    backend: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    max_length: int | None = None
    batch_size: int = 16
    threads: int | None = None
    prefix_cache: bool = True
    instruction: str | None = None
    normalize: bool = False
    fusion_weight: float | None = None

    def load(self):
        from ..reranker import Reranker

        return Reranker(self.model, backend=self.backend, device=self.device, dtype=self.dtype,
                        max_length=self.max_length, batch_size=self.batch_size, threads=self.threads,
                        prefix_cache=self.prefix_cache)

    def resolved(self) -> ScoringSpec:
        """A model path made absolute: workers and Ray actors may run in another folder than the command."""
        path = Path(os.path.expanduser(self.model)) if self.model else None
        return self.with_changes(model=str(path.resolve())) if path is not None and path.exists() else self

    def manifest_options(self) -> dict:
        """What decides the scores, so a resumed job must match it. Device, threads, batch size and the prefix
        cache are left out: they change how fast, not what (beyond float rounding), and a job may resume on other
        hardware."""
        return {"model": self.resolved().model, "backend": self.backend, "dtype": self.dtype,
                "max_length": self.max_length, "instruction": self.instruction, "normalize": self.normalize,
                "fusion_weight": self.fusion_weight}

    def with_changes(self, **changes) -> ScoringSpec:
        return ScoringSpec(**{**asdict(self), **changes})


@dataclass
class ShardResult:
    """One scored shard: its output rows in order (query by query, best first) and who scored it how fast."""

    index: int
    rows: list[dict]
    queries: int
    pairs: int
    seconds: float
    worker: str
    #: the model load that preceded this shard in the same worker (the first shard of each worker only)
    load_seconds: float = 0.0
    fusion_weights: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ShardResult:
        return cls(**data)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _NoInnerBar:
    """The Reranker as rank_documents uses it, without its per-call progress bar: the job draws one bar for all."""

    def __init__(self, reranker):
        self._reranker = reranker

    @property
    def contract(self):
        return self._reranker.contract

    def predict(self, pairs, **options):
        return self._reranker.predict(pairs, show_progress_bar=False, **options)


def score_shard(reranker, spec: ScoringSpec, index: int, tasks: list[QueryTask]) -> ShardResult:
    """Rows {query_id, doc_id, rank, score, rerank_score, first_stage_score} for every candidate of every query.

    rank_documents does the ranking and fusion, so batch output ranks exactly as `prorank-edge rerank` does:
    `score` is the fused score where a fusion weight applies (else the reranker's), `rank` orders by it with
    ties in input order.
    """
    from ..reranker import rank_documents

    start = time.perf_counter()
    quiet = _NoInnerBar(reranker)
    rows: list[dict] = []
    weights = set()
    pairs = 0
    for task in tasks:
        if not task.candidates:
            continue
        records, weight = rank_documents(quiet, task.query, task.candidates, instruction=spec.instruction,
                                         normalize=spec.normalize, fusion_weight=spec.fusion_weight)
        first_stage = {d.id: d.score for d in task.candidates}
        for record in records:
            rows.append({"query_id": task.query_id, "doc_id": record["id"], "rank": record["rank"],
                         "score": record["score"], "rerank_score": record.get("rerank_score", record["score"]),
                         "first_stage_score": first_stage[record["id"]]})
        weights.add(weight)
        pairs += len(task.candidates)
    return ShardResult(index, rows, len(tasks), pairs, time.perf_counter() - start, worker_name(),
                       fusion_weights=sorted(weights, key=lambda w: (w is not None, w or 0.0)))
