"""The Ray engine: shards as rows of a `ray.data` dataset, scored by `map_batches` over a fixed actor pool.

Each actor loads the model once in its constructor and scores one whole shard per call, so a query's
candidates are scored in one place. Scored rows come back to this process, which writes each shard file: the
cluster needs no shared file system, only prorank-edge and the model at the same path (or a Hub id) on every
node. Works on a local instance (`ray.init()` starts one) and on a running cluster (`--ray-address`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import numpy as np

from ..errors import MissingExtraError, ProrankError
from .inputs import QueryTask
from .outputs import Shard
from .scoring import ScoringSpec, ShardResult, score_shard


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingExtraError("--engine ray", "ray", "ray[data]") from None
    return ray


class ShardScorer:
    """A Ray Data actor: one Reranker for its lifetime, one shard per row of each batch.

    A user error (a bad model path, a missing extra) comes back as a result, not as an exception: Ray reports
    an actor that fails in its constructor as a bare ActorDiedError with the traceback flattened into text.
    """

    def __init__(self, spec: ScoringSpec):
        start = time.perf_counter()
        self.spec = spec
        self.error = None
        try:
            self.reranker = spec.load()
        except ProrankError as exc:
            self.error = str(exc)
        self.load_seconds = time.perf_counter() - start

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for index, tasks in zip(batch["shard"], batch["tasks"]):
            results.append(json.dumps({"error": self.error} if self.error else self._score(int(index), str(tasks))))
        return {"shard": np.asarray(batch["shard"], dtype=np.int64), "result": np.array(results, dtype=object)}

    def _score(self, index: int, tasks: str) -> dict:
        try:
            result = score_shard(self.reranker, self.spec, index, [QueryTask.from_dict(t) for t in json.loads(tasks)])
        except ProrankError as exc:
            return {"error": str(exc)}
        result.load_seconds, self.load_seconds = self.load_seconds, 0.0
        return result.to_dict()


def actor_resources(ray, spec: ScoringSpec) -> tuple[ScoringSpec, dict]:
    """The spec each actor loads and what it reserves: a GPU for cuda (or auto on a cluster that has GPUs), else
    --threads CPUs (default 1), which the actor's backend then uses; an actor on every core a node has would
    fight the others there for them."""
    gpu = spec.device.startswith("cuda") or (spec.device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)
    if gpu:
        # Ray sets CUDA_VISIBLE_DEVICES to the GPU it gave the actor, which the actor then sees as cuda:0.
        return spec.with_changes(device="cuda"), {"num_gpus": 1, "num_cpus": 1}
    threads = spec.threads or 1
    return spec.with_changes(device="cpu", threads=threads), {"num_cpus": threads}


def run_ray(spec: ScoringSpec, shards: list[Shard], workers: int, on_result: Callable[[ShardResult], None],
            address: str | None = None, blocks: int | None = None, status: Callable[[str], None] = lambda m: None
            ) -> None:
    """Score `shards` on `workers` actors, calling on_result here as each shard comes back, in any order.

    Uses the Ray instance this process is already connected to, else connects to `address`, else starts a
    local one (stopped again at the end). blocks: input blocks, default one per shard, so any idle actor can
    take any shard.
    """
    if not shards:
        return
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise ProrankError(f"cannot connect to the Ray cluster at {address} ({exc})") from None
    context = ray.data.DataContext.get_current()
    data_logger = logging.getLogger("ray.data")
    saved = context.enable_progress_bars, context.print_on_execution_start, data_logger.level
    # Ray Data's own bars, plan printouts and per-run log lines would interleave with the job's single bar;
    # resource shortages, the one warning that matters here, are reported by _warn_if_short instead.
    context.enable_progress_bars, context.print_on_execution_start = False, False
    data_logger.setLevel(logging.ERROR)
    try:
        actor_spec, resources = actor_resources(ray, spec)
        workers = max(1, min(workers, len(shards)))
        _warn_if_short(ray, workers, resources, status)
        items = [{"shard": s.index, "tasks": json.dumps([t.to_dict() for t in s.tasks], ensure_ascii=False)}
                 for s in shards]
        dataset = ray.data.from_items(items, override_num_blocks=min(blocks or len(items), len(items)))
        scored = dataset.map_batches(
            ShardScorer, fn_constructor_kwargs={"spec": actor_spec}, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers), **resources,
        )
        for row in scored.iter_rows():
            result = json.loads(row["result"])
            if "error" in result:
                raise ProrankError(result["error"])
            on_result(ShardResult.from_dict(result))
    finally:
        context.enable_progress_bars, context.print_on_execution_start, level = saved
        data_logger.setLevel(level)
        if started_here:
            ray.shutdown()


def _warn_if_short(ray, workers: int, resources: dict, status: Callable[[str], None]) -> None:
    total = ray.cluster_resources()
    for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        need = workers * resources.get(key, 0)
        if need > total.get(name, 0):
            # An autoscaling cluster may still add nodes, so this waits rather than fails.
            status(f"warning: {workers} actors need {need:g} {name}s and the Ray cluster has "
                   f"{total.get(name, 0):g}; the job waits for them")

