"""The local engine: shards scored in this process, or by N spawned processes that each load the model once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from ..errors import ProrankError
from .outputs import Shard
from .scoring import ScoringSpec, ShardResult, score_shard


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(spec: ScoringSpec, workers: int) -> int | None:
    """--threads, or the box's cores shared out: N processes that each take every core slow each other down."""
    if spec.threads is not None or workers == 1:
        return spec.threads
    return max(1, available_cpus() // workers)


def run_local(spec: ScoringSpec, shards: list[Shard], workers: int, on_result: Callable[[ShardResult], None]) -> None:
    """Score `shards`, calling on_result (in this process) as each one finishes, in any order."""
    if not shards:
        return
    workers = max(1, min(workers, len(shards)))
    if workers == 1:
        start = time.perf_counter()
        with spec.load() as reranker:
            load_seconds = time.perf_counter() - start
            for shard in shards:
                result = score_shard(reranker, spec, shard.index, shard.tasks)
                result.load_seconds, load_seconds = load_seconds, 0.0
                on_result(result)
        return

    import multiprocessing

    spec = spec.with_changes(threads=threads_per_worker(spec, workers))
    # spawn, not fork: a forked copy of a process that already runs torch or onnxruntime threads can deadlock.
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers, initializer=_init_worker, initargs=(spec,))
    try:
        for result in pool.imap_unordered(_score_in_worker, [(s.index, s.tasks) for s in shards], chunksize=1):
            if isinstance(result, str):
                raise ProrankError(result)
            on_result(result)
        pool.close()
    except BaseException:
        # An error, Ctrl-C or SIGTERM: stop the workers now rather than let them finish their shards.
        pool.terminate()
        raise
    finally:
        pool.join()


_SPEC: ScoringSpec | None = None
_RERANKER = None


def _init_worker(spec: ScoringSpec) -> None:
    import threading

    from tqdm.std import tqdm

    # The parent handles Ctrl-C and terminates the pool; workers that also raised would only print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing one, a named semaphore in a spawned process, which a terminated
    # worker leaves for Python's resource tracker to warn about; a worker's bars are off, a thread lock will do.
    tqdm.set_lock(threading.RLock())
    global _SPEC
    _SPEC = spec


def _score_in_worker(job: tuple[int, list]) -> ShardResult | str:
    """The model is loaded here on first use, not in the pool initializer: a failing initializer makes the pool
    respawn workers forever, while a failing task reports its error to the parent."""
    global _RERANKER
    load_seconds = 0.0
    try:
        if _RERANKER is None:
            start = time.perf_counter()
            _RERANKER = _SPEC.load()
            load_seconds = time.perf_counter() - start
        result = score_shard(_RERANKER, _SPEC, *job)
    except ProrankError as exc:
        # As a string: some ProrankError subclasses take other arguments and cannot be unpickled.
        return str(exc)
    result.load_seconds = load_seconds
    return result
