"""Dynamic batching: the documents of concurrent requests share forward passes, scored in one worker thread.

Requests hand in their prompts' token ids and await a future. The worker thread takes everything queued at once,
groups it by length with `contract.length_batches` (the bucketing every backend uses offline), so one forward
pass may hold documents of several requests, and writes each score back to its own (request, index) slot. With
the backend's prefix reuse on, a request of a few documents or more has passes of its own
(`contract.plan_batches`), so its shared prompt prefix is computed once; smaller requests still merge. A
request whose client went away is cancelled: what it still had queued is dropped before scoring, never scored.
The event loop only queues and awaits, so it never blocks on the model.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from ..backends.base import score_sharing
from ..contract import plan_batches

# Requests with at least this many documents get their own batches and their own prefix pass.
PREFIX_MIN_DOCUMENTS = 4


class QueueFull(Exception):
    """The queue holds --max-queue requests already; `retry_after` is a guess, in whole seconds, at when to retry."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is at its queue limit; retry in {retry_after} s")
        self.retry_after = retry_after


class BatcherStopped(Exception):
    """The batcher is shutting down and takes no new work."""


# A job's state once it needs no more scoring; the worker reads it between batches.
_DONE, _CANCELLED, _FAILED = "done", "cancelled", "failed"


class _Job:
    """One request's prompts; `scores[i]` is filled by the worker, and the future resolves when all are in."""

    __slots__ = ("token_ids", "longest", "scores", "remaining", "future", "loop", "state", "arrived")

    def __init__(self, token_ids: Sequence[Sequence[int]], loop: asyncio.AbstractEventLoop):
        self.token_ids = token_ids
        self.longest = max(len(t) for t in token_ids)
        self.scores = np.empty(len(token_ids), dtype=np.float32)
        self.remaining = len(token_ids)
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.state: str | None = None
        self.arrived = time.monotonic()


def _resolve(future: asyncio.Future, scores: np.ndarray | None, error: BaseException | None) -> None:
    if future.done():  # cancelled by its request in the meantime
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(scores)


class DynamicBatcher:
    """Merges queued requests' prompts into length-bucketed batches, scored by `score_batch` in one thread.

    score_batch: raw scores for a list of prompts (a backend's `score_batch`).
    batch_size, max_batch_tokens: the caps of `length_batches` (prompts per pass; passes' size x longest prompt).
    max_wait_s: how long an idle worker waits for more requests to join the first one before it starts.
    max_queue: requests queued or being scored at once; the next one gets QueueFull.
    metrics: a `ServerMetrics` (or None), told about batches, drops and the queue.
    score_with_prefix: a backend's `score_with_prefix`, or None. Given, a request of PREFIX_MIN_DOCUMENTS or more
        has batches of its own and its shared prefix (system prompt, instruction, query) is computed once; smaller
        requests share batches, and the prefix common to all of them.
    call_cost: the backend's `padding_call_cost` (see `length_batches`), or None.
    """

    def __init__(self, score_batch: Callable[[list[Sequence[int]]], np.ndarray], batch_size: int,
                 max_batch_tokens: int | None = None, max_wait_s: float = 0.005, max_queue: int = 256,
                 metrics=None, score_with_prefix: Callable[[Sequence[int], list[Sequence[int]]], np.ndarray] | None
                 = None, call_cost: int | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._score_batch = score_batch
        self._score_with_prefix = score_with_prefix
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.call_cost = call_cost
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.max_queue = max_queue
        self.metrics = metrics
        self._cond = threading.Condition()
        self._pending: deque[_Job] = deque()
        self._pending_docs = 0
        self._pending_longest = 0
        # Requests admitted and not finished (queued or being scored), and their documents still unscored.
        self._active = 0
        self._unscored = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Documents per second of recent batches, for the Retry-After estimate.
        self._rate = 0.0

    # ---- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prorank-scorer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Take no new work, finish what is queued, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def active_requests(self) -> int:
        return self._active

    @property
    def full(self) -> bool:
        return self._active >= self.max_queue

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained enough, from the recent scoring rate (at least 1)."""
        if self._rate <= 0:
            return 1
        return max(1, min(60, math.ceil(self._unscored / self._rate)))

    # ---- requests (event loop side) -------------------------------------------------------------------
    async def score(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Raw scores of these prompts, in their order. Cancelling the awaiting task drops what is still queued."""
        if not token_ids:
            return np.empty(0, dtype=np.float32)
        job = _Job(token_ids, asyncio.get_running_loop())
        with self._cond:
            if self._stopping:
                raise BatcherStopped("the server is shutting down")
            if self._active >= self.max_queue:
                raise QueueFull(self.retry_after())
            self._pending.append(job)
            self._pending_docs += len(token_ids)
            self._pending_longest = max(self._pending_longest, job.longest)
            self._active += 1
            self._unscored += len(token_ids)
            self._report_queue()
            self._cond.notify_all()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._cancel(job)
            raise

    def _cancel(self, job: _Job) -> None:
        with self._cond:
            if job.state is not None:
                return
            job.state = _CANCELLED
            self._active -= 1
            try:
                self._pending.remove(job)
            except ValueError:  # already taken by the worker, which drops its items batch by batch
                pass
            else:
                self._pending_docs -= len(job.token_ids)
                self._pending_longest = max((j.longest for j in self._pending), default=0)
                self._unscored -= len(job.token_ids)
                if self.metrics is not None:
                    self.metrics.documents_dropped.inc(len(job.token_ids))
            self._report_queue()

    def _report_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_requests.set(self._active)
            self.metrics.queue_documents.set(self._unscored)

    # ---- the worker thread ----------------------------------------------------------------------------
    def _ready(self) -> bool:
        """Enough is queued for a full batch, so waiting for more would only add latency."""
        if self._pending_docs >= self.batch_size:
            return True
        return self.max_batch_tokens is not None and self._pending_longest * self._pending_docs >= self.max_batch_tokens

    def _take(self) -> list[_Job] | None:
        """All queued jobs, once the first has waited max_wait_s for company; None when stopped and drained."""
        with self._cond:
            while not self._pending:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._pending and not self._stopping and not self._ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs = list(self._pending)
            self._pending.clear()
            self._pending_docs = 0
            self._pending_longest = 0
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            if jobs:
                self._score_jobs(jobs)

    def _score_jobs(self, jobs: list[_Job]) -> None:
        items = [(job, i) for job in jobs for i in range(len(job.token_ids))]
        prompts = [job.token_ids[i] for job, i in items]
        # A request of a few documents gains little from a prefix pass of its own and would lose the forward pass it
        # can share: those merge as before, under the prefix all of them share (the system prompt).
        keys = [id(job) if len(job.token_ids) >= PREFIX_MIN_DOCUMENTS else None for job, _ in items]
        batches = plan_batches(prompts, keys, self.batch_size, self.max_batch_tokens,
                               self._score_with_prefix is not None, self.call_cost)
        for prefix, batch in batches:
            with self._cond:
                # A request cancelled while earlier batches ran loses its remaining items here, before scoring.
                live = [items[k] for k in batch if items[k][0].state is None]
                dropped = sum(items[k][0].state == _CANCELLED for k in batch)
                self._unscored -= len(batch) - len(live)
                if dropped and self.metrics is not None:
                    self.metrics.documents_dropped.inc(dropped)
                self._report_queue()
            if not live:
                continue
            started = time.perf_counter()
            try:
                scores = np.asarray(score_sharing(self._score_batch, self._score_with_prefix,
                                                  [job.token_ids[i] for job, i in live], prefix), dtype=np.float32)
                if scores.shape != (len(live),):
                    raise RuntimeError(f"the backend returned {scores.shape} scores for {len(live)} prompts")
            except Exception as exc:  # noqa: BLE001 - the failure goes to the requests; the worker goes on
                with self._cond:
                    self._unscored -= len(live)
                    for job, _ in live:
                        self._finish(job, _FAILED, None, exc)
                    self._report_queue()
                continue
            elapsed = time.perf_counter() - started
            self._record_batch(len(live), max(len(job.token_ids[i]) for job, i in live), elapsed)
            with self._cond:
                self._unscored -= len(live)
                for (job, i), score in zip(live, scores):
                    if job.state is not None:  # cancelled while this batch ran: scored, but nobody waits
                        continue
                    job.scores[i] = score
                    job.remaining -= 1
                    if job.remaining == 0:
                        self._finish(job, _DONE, job.scores, None)
                self._report_queue()

    def _record_batch(self, size: int, longest: int, elapsed: float) -> None:
        rate = size / elapsed if elapsed > 0 else 0.0
        self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
        if self.metrics is not None:
            self.metrics.documents_scored.inc(size)
            self.metrics.batch_size.observe(size)
            self.metrics.batch_tokens.observe(size * longest)
            self.metrics.batch_seconds.observe(elapsed)

    def _finish(self, job: _Job, state: str, scores: np.ndarray | None, error: BaseException | None) -> None:
        """Close a job and hand its outcome to its event loop; called with the lock held."""
        if job.state is not None:
            return
        job.state = state
        self._active -= 1
        try:
            job.loop.call_soon_threadsafe(_resolve, job.future, scores, error)
        except RuntimeError:  # the event loop has closed: nobody waits for this result any more
            pass
