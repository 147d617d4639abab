"""DynamicBatcher on a fake backend: routing, batch caps, merging, dropping cancelled work, queue limit, stop."""

import asyncio
import random
import threading
import time

import numpy as np
import pytest

pytest.importorskip("prometheus_client")

from prorank_edge.serving.batcher import BatcherStopped, DynamicBatcher, QueueFull  # noqa: E402
from prorank_edge.serving.metrics import ServerMetrics  # noqa: E402


def fake_score(ids) -> float:
    """A score that differs for every prompt here: any swapped, lost or duplicated result shows."""
    return float(ids[0]) + 0.001 * len(ids)


class FakeBackend:
    """Records every batch; `gate` (when set) holds the worker inside score_batch until released."""

    def __init__(self, fail_on: int | None = None):
        self.batches: list[list[list[int]]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail_on = fail_on

    def score_batch(self, token_ids):
        self.batches.append([list(t) for t in token_ids])
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never released the gate"
        if self.fail_on is not None and any(t[0] == self.fail_on for t in token_ids):
            raise RuntimeError("backend exploded")
        return np.array([fake_score(t) for t in token_ids], dtype=np.float32)


def request(job: int, count: int, rng: random.Random) -> list[list[int]]:
    # First token: who it belongs to (job * 1000 + index); the rest only sets the length.
    return [[job * 1000 + i] + [7] * rng.randint(0, 40) for i in range(count)]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def sample(metrics: ServerMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def score_all(batcher: DynamicBatcher, jobs: list[list[list[int]]]) -> None:
    """Send every job at once, stop the batcher, and check each job got its own prompts' scores in order."""
    async def main():
        return await asyncio.gather(*(batcher.score(ids) for ids in jobs))

    try:
        results = run(main())
    finally:
        batcher.stop()
    for ids, scores in zip(jobs, results):
        np.testing.assert_array_equal(scores, np.array([fake_score(t) for t in ids], dtype=np.float32))


async def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_concurrent_requests_are_merged_and_each_gets_its_own_scores():
    rng = random.Random(0)
    backend = FakeBackend()
    batcher = DynamicBatcher(backend.score_batch, batch_size=8, max_batch_tokens=200, max_wait_s=0.05)
    batcher.start()
    jobs = [request(j, rng.randint(0, 12), rng) for j in range(1, 31)]
    score_all(batcher, jobs)
    scored = [t[0] for batch in backend.batches for t in batch]
    assert sorted(scored) == sorted(t[0] for ids in jobs for t in ids)  # each prompt scored exactly once
    for batch in backend.batches:
        assert len(batch) <= 8
        assert len(batch) == 1 or len(batch) * max(len(t) for t in batch) <= 200
    assert any(len({t[0] // 1000 for t in batch}) > 1 for batch in backend.batches), "no batch mixed requests"


def test_a_call_cost_cuts_a_padded_batch_where_padding_costs_more():
    backend = FakeBackend()
    batcher = DynamicBatcher(backend.score_batch, batch_size=8, max_wait_s=0.05, call_cost=16)
    batcher.start()
    score_all(batcher, [[[1000 + i] + [7] * 60 for i in range(3)] + [[1003 + i] for i in range(3)]])
    assert sorted(len(batch) for batch in backend.batches) == [3, 3]  # long and short apart, not one padded batch


def test_with_prefix_reuse_a_batch_holds_one_request_and_its_prefix_goes_apart():
    """Each request's prompts share a prefix; the batcher hands it over once per batch, never mixing requests."""
    rng = random.Random(1)
    calls = []

    def score_with_prefix(prefix, suffixes):
        calls.append((list(prefix), [list(s) for s in suffixes]))
        return np.array([fake_score(list(prefix) + list(s)) for s in suffixes], dtype=np.float32)

    backend = FakeBackend()
    batcher = DynamicBatcher(backend.score_batch, batch_size=4, max_wait_s=0.05, score_with_prefix=score_with_prefix)
    batcher.start()
    # job j: prefix [j, 5, 5] then its own index and some length; 4 or more prompts, so each has its own batches
    jobs = [[[j, 5, 5, i] + [7] * rng.randint(0, 9) for i in range(rng.randint(4, 9))] for j in range(1, 13)]
    score_all(batcher, jobs)
    assert backend.batches == []  # every request had 2+ prompts with a shared prefix
    for prefix, suffixes in calls:
        assert prefix[1:] == [5, 5] and 1 <= prefix[0] <= 12  # one request's prefix, up to where indices differ
        assert len(suffixes) <= 4
    assert sum(len(s) for _, s in calls) == sum(len(j) for j in jobs)


def test_with_prefix_reuse_small_requests_still_merge():
    """Requests of fewer than PREFIX_MIN_DOCUMENTS prompts share a pass (and only the prefix all of them share)."""
    from prorank_edge.serving.batcher import PREFIX_MIN_DOCUMENTS

    calls = []

    def score_with_prefix(prefix, suffixes):
        calls.append((list(prefix), len(suffixes)))
        return np.array([fake_score(list(prefix) + list(s)) for s in suffixes], dtype=np.float32)

    backend = FakeBackend()
    batcher = DynamicBatcher(backend.score_batch, batch_size=16, max_wait_s=0.2, score_with_prefix=score_with_prefix)
    batcher.start()
    # every prompt starts with the same "system prompt" [9, 9], then the request's own tokens
    jobs = [[[9, 9, j, i, 7] for i in range(2)] for j in range(1, 5)]
    big = [[9, 9, 50, i] + [7] * i for i in range(PREFIX_MIN_DOCUMENTS)]
    score_all(batcher, jobs + [big])
    assert sorted(calls) == [([9, 9], 8), ([9, 9, 50], PREFIX_MIN_DOCUMENTS)]


def test_an_idle_worker_waits_max_wait_for_company_but_not_for_a_full_batch():
    backend = FakeBackend()
    batcher = DynamicBatcher(backend.score_batch, batch_size=4, max_wait_s=1.0)
    batcher.start()

    async def two_apart():
        first = asyncio.ensure_future(batcher.score([[1000], [1001]]))
        await asyncio.sleep(0.05)
        return await asyncio.gather(first, batcher.score([[2000]]))

    async def full_batch():
        started = time.monotonic()
        await batcher.score([[3000], [3001], [3002], [3003]])
        return time.monotonic() - started

    try:
        run(two_apart())
        assert [len(b) for b in backend.batches] == [3]  # the second request joined the first one's batch
        assert run(full_batch()) < 0.5  # a full batch starts at once, not after max_wait
    finally:
        batcher.stop()


@pytest.mark.parametrize("taken", [False, True], ids=["still-queued", "taken-in-a-later-batch"])
def test_a_cancelled_request_is_dropped_before_scoring(taken):
    backend = FakeBackend()
    backend.gate = threading.Event()
    metrics = ServerMetrics()
    # taken: both requests land in one snapshot (A alone is under the token cap, so the worker waits for B), and
    # the cap puts B's short prompts in a second batch; else B arrives while A's batch is being scored and is
    # still queued when cancelled.
    batcher = DynamicBatcher(backend.score_batch, batch_size=4, max_batch_tokens=70,
                             max_wait_s=1.0 if taken else 0.0, metrics=metrics)
    batcher.start()
    a = [[1000] + [7] * 30, [1001] + [7] * 30]
    b = [[2000], [2001]]

    async def main():
        first = asyncio.ensure_future(batcher.score(a))
        if not taken:
            await wait_until(backend.entered.is_set, "A's batch")
        second = asyncio.ensure_future(batcher.score(b))
        await wait_until(lambda: batcher.active_requests == 2, "B queued")
        await wait_until(backend.entered.is_set, "A's batch")
        second.cancel()
        await asyncio.sleep(0.05)
        backend.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await second
        return await first

    try:
        scores = run(main())
    finally:
        batcher.stop()
    np.testing.assert_array_equal(scores, np.array([fake_score(t) for t in a], dtype=np.float32))
    assert [t[0] for batch in backend.batches for t in batch] == [1000, 1001]  # B never reached the model
    assert sample(metrics, "prorank_documents_dropped_total") == 2
    assert sample(metrics, "prorank_documents_scored_total") == 2
    assert sample(metrics, "prorank_queue_requests") == 0 and sample(metrics, "prorank_queue_documents") == 0


def test_a_full_queue_turns_requests_away_until_it_drains():
    backend = FakeBackend()
    backend.gate = threading.Event()
    batcher = DynamicBatcher(backend.score_batch, batch_size=4, max_wait_s=0.0, max_queue=1)
    batcher.start()

    async def main():
        first = asyncio.ensure_future(batcher.score([[1000]]))
        await wait_until(backend.entered.is_set, "A's batch")
        with pytest.raises(QueueFull) as full:
            await batcher.score([[2000]])
        assert full.value.retry_after >= 1
        backend.gate.set()
        await first
        return await batcher.score([[3000]])

    try:
        assert run(main()).tolist() == pytest.approx([fake_score([3000])])
    finally:
        batcher.stop()


def test_a_backend_failure_fails_its_requests_and_the_worker_goes_on():
    backend = FakeBackend(fail_on=1000)
    batcher = DynamicBatcher(backend.score_batch, batch_size=4, max_wait_s=0.0)
    batcher.start()

    async def main():
        with pytest.raises(RuntimeError, match="backend exploded"):
            await batcher.score([[1000], [1001]])
        return await batcher.score([[2000]])

    try:
        assert run(main()).tolist() == pytest.approx([fake_score([2000])])
    finally:
        batcher.stop()


def test_stop_finishes_queued_work_then_refuses_more():
    backend = FakeBackend()
    backend.gate = threading.Event()
    batcher = DynamicBatcher(backend.score_batch, batch_size=1, max_wait_s=0.0)
    batcher.start()

    async def main():
        pending = [asyncio.ensure_future(batcher.score([[j * 1000]])) for j in range(1, 4)]
        await wait_until(backend.entered.is_set, "the first batch")
        stopper = threading.Thread(target=batcher.stop)
        stopper.start()
        await asyncio.sleep(0.05)
        backend.gate.set()
        results = await asyncio.gather(*pending)
        stopper.join(10)
        assert not stopper.is_alive()
        with pytest.raises(BatcherStopped):
            await batcher.score([[9000]])
        return results

    results = run(main())
    assert [r.tolist() for r in results] == [[pytest.approx(fake_score([j * 1000]))] for j in range(1, 4)]
