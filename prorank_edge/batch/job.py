"""A batch job from input to merged output: validate, shard, score what is not done yet, merge, summarize."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ProrankError
from .inputs import Checks, InputSpec
from .outputs import OUTPUT_FORMATS, ShardStore, make_shards, shards_folder
from .scoring import ScoringSpec, ShardResult

ENGINES = ("local", "ray")
# 32 queries of BEIR's usual 100 candidates: 3,200 pairs, about a minute for a 135M model on one core, so a
# crash loses little and a handful of workers still balance on a few hundred queries.
DEFAULT_SHARD_SIZE = 32


@dataclass
class BatchJob:
    input: InputSpec
    output: Path
    spec: ScoringSpec
    output_format: str = "jsonl"
    trec_out: Path | None = None
    engine: str = "local"
    workers: int = 1
    ray_address: str | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    resume: bool = False
    keep_shards: bool = False
    #: None: a bar only when stderr is a terminal
    progress: bool | None = None


def _bar(total: int, show: bool | None):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if show is None else not show
    # The rate is in pairs/s, and the ETA follows from it.
    return tqdm(total=total, desc="reranking", unit="pair", file=sys.stderr, disable=disable, smoothing=0.05,
                dynamic_ncols=True)


class _Tally:
    """Per-worker counts, and the one place that writes a shard: a second result for a shard (an actor retried
    by Ray after it already answered) is dropped, never written twice."""

    def __init__(self, store: ShardStore, bar, total_shards: int, done_before: int):
        self.store, self.bar = store, bar
        self.total, self.done = total_shards, done_before
        self.written: set[int] = set()
        self.workers: dict[str, dict] = {}
        self.weights: set = set()
        self.pairs = self.queries = 0

    def __call__(self, result: ShardResult) -> None:
        if result.index in self.written:
            return
        self.store.write(result.index, result.rows)
        self.written.add(result.index)
        self.done += 1
        self.pairs += result.pairs
        self.queries += result.queries
        self.weights.update(result.fusion_weights)
        worker = self.workers.setdefault(result.worker, {"worker": result.worker, "shards": 0, "queries": 0,
                                                         "pairs": 0, "seconds": 0.0, "load_seconds": 0.0})
        worker["shards"] += 1
        worker["queries"] += result.queries
        worker["pairs"] += result.pairs
        worker["seconds"] += result.seconds
        worker["load_seconds"] += result.load_seconds
        self.bar.update(result.pairs)
        self.bar.set_postfix_str(f"shard {self.done}/{self.total}", refresh=False)

    def per_worker(self) -> list[dict]:
        out = []
        for entry in sorted(self.workers.values(), key=lambda w: w["worker"]):
            seconds = entry["seconds"]
            out.append({**entry, "seconds": round(seconds, 3), "load_seconds": round(entry["load_seconds"], 3),
                        "pairs_per_s": round(entry["pairs"] / seconds, 2) if seconds > 0 else None})
        return out


def run_job(job: BatchJob, status: Callable[[str], None] = lambda message: None) -> dict:
    """Run `job` to its merged output and return the summary. Bad queries are in summary["skipped"]; the
    caller decides what they mean for the exit status."""
    if job.engine not in ENGINES:
        raise ProrankError(f"unknown engine {job.engine!r} (known: {', '.join(ENGINES)})")
    if job.output_format not in OUTPUT_FORMATS:
        raise ProrankError(f"unknown output format {job.output_format!r} (known: {', '.join(OUTPUT_FORMATS)})")
    if job.workers < 1:
        raise ProrankError("--workers must be at least 1")
    if job.ray_address and job.engine != "ray":
        raise ProrankError("--ray-address needs --engine ray")
    inputs = {p.resolve() for p in job.input.paths}
    for target in (job.output, job.trec_out):
        if target is not None and target.resolve() in inputs:
            raise ProrankError(f"{target}: is also an input file; write the output elsewhere")
    started = time.perf_counter()
    checks = Checks(require_scores=job.spec.fusion_weight is not None, trec_ids=job.trec_out is not None)
    data = job.input.read(checks)
    if not data.tasks and not data.skipped:
        raise ProrankError(f"{job.input.describe()}: no queries (the input is empty)")
    for skipped in data.skipped:
        status(f"skipping {skipped}")

    shards = make_shards(data.tasks, job.shard_size)
    store = ShardStore(shards_folder(job.output), {
        "input": {"kind": job.input.kind, "files": [str(p) for p in job.input.paths],
                  "sha256": job.input.fingerprint()},
        "shard_size": job.shard_size, "shards": len(shards), "options": job.spec.manifest_options(),
        # The queries that passed validation, which also depends on options (--trec-out refuses ids with spaces).
        "queries_sha256": hashlib.sha256("\n".join(t.query_id for t in data.tasks).encode()).hexdigest(),
    })
    done = store.open(job.resume)
    pending = [s for s in shards if s.index not in done]
    if done:
        status(f"resuming: {len(done)} of {len(shards)} shards were done, {len(pending)} to go")
    status(f"{len(data.tasks)} queries, {data.pairs} pairs in {len(shards)} shards; engine {job.engine}, "
           f"{job.workers} worker{'s' if job.workers > 1 else ''}")

    spec = job.spec.resolved()
    scoring_start = time.perf_counter()
    with _bar(sum(s.pairs for s in pending), job.progress) as bar:
        tally = _Tally(store, bar, len(shards), len(done))
        if job.engine == "ray":
            from .ray_engine import run_ray

            run_ray(spec, pending, job.workers, tally, address=job.ray_address, status=status)
        else:
            from .local import run_local

            run_local(spec, pending, job.workers, tally)
    scoring_seconds = time.perf_counter() - scoring_start
    missing = [s.index for s in pending if s.index not in tally.written]
    if missing:  # an engine that returned without every shard is a bug, never a silently short output
        raise ProrankError(f"shards {missing[:10]} were not scored; run again with --resume")

    rows = store.merge(shards, job.output, job.output_format, job.trec_out)
    if not job.keep_shards:
        store.remove()
    status(f"wrote {rows} rows to {job.output}" + (f" and a TREC run to {job.trec_out}" if job.trec_out else ""))
    return {
        "output": str(job.output),
        "trec_out": str(job.trec_out) if job.trec_out else None,
        "engine": job.engine,
        "workers": job.workers,
        "queries": len(data.tasks),
        "pairs": rows,
        "shards": {"total": len(shards), "resumed": len(done), "scored": len(tally.written)},
        "scored_now": {"queries": tally.queries, "pairs": tally.pairs},
        "seconds": round(scoring_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "pairs_per_s": round(tally.pairs / scoring_seconds, 2) if tally.pairs and scoring_seconds > 0 else None,
        "per_worker": tally.per_worker(),
        "fusion_weights": sorted(tally.weights, key=lambda w: (w is not None, w or 0.0)),
        "skipped": [s.to_dict() for s in data.skipped],
    }
