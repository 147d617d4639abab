"""The paired comparison (bootstrap interval, randomization test) against scipy.stats, its reference peer."""

from __future__ import annotations

import numpy as np
import pytest

from prorank_edge.errors import ProrankError
from prorank_edge.evaluation.significance import describe_comparison, paired_comparison

stats = pytest.importorskip("scipy.stats")


def _per_query(values) -> dict[str, float]:
    return {f"q{i}": float(v) for i, v in enumerate(values)}


def _scipy_p(diff: np.ndarray, resamples=np.inf) -> float:
    return stats.permutation_test((diff,), np.mean, permutation_type="samples", n_resamples=resamples,
                                  alternative="two-sided", random_state=0).pvalue


@pytest.mark.parametrize("seed", range(5))
def test_exact_randomization_p_equals_scipy(seed):
    """Up to 16 queries every sign pattern is enumerated, as scipy does: the p-values are the same number.
    Differences include exact zeros and repeats (nDCG@10 per query often ties)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 14))
    base = rng.random(n)
    system = base + rng.choice([0.0, 0.0, 0.1, -0.05, 0.2], size=n)
    got = paired_comparison(_per_query(system), _per_query(base))
    assert got["p_value"] == pytest.approx(_scipy_p(system - base), abs=1e-12)


def test_monte_carlo_randomization_p_is_close_to_scipy_exact():
    """20 queries: 2**20 patterns, more than the exact limit, so sampled; within sampling error of exact."""
    rng = np.random.default_rng(7)
    base = rng.random(20)
    system = base + rng.normal(0.03, 0.1, size=20)
    exact = _scipy_p(system - base)
    got = paired_comparison(_per_query(system), _per_query(base), resamples=40_000)["p_value"]
    assert 0.02 < exact < 0.9 and got == pytest.approx(exact, abs=0.01)


def test_bootstrap_interval_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(3)
    base = rng.random(300)
    system = np.clip(base + rng.normal(0.01, 0.15, size=300), 0, 1)
    got = paired_comparison(_per_query(system), _per_query(base), resamples=20_000)
    ref = stats.bootstrap((system - base,), np.mean, n_resamples=20_000, method="percentile",
                          confidence_level=0.95, random_state=0).confidence_interval
    assert got["ci"][0] == pytest.approx(ref.low, abs=0.002) and got["ci"][1] == pytest.approx(ref.high, abs=0.002)
    assert got["diff"] == pytest.approx(float(np.mean(system - base)))
    assert got["ci"][0] < got["diff"] < got["ci"][1]


def test_counts_verdicts_and_errors():
    base = _per_query([0.5, 0.6, 0.7, 0.2, 0.9, 0.4, 0.3, 0.8, 0.1, 0.55])
    better = {q: v + 0.05 for q, v in base.items()}
    got = paired_comparison(better, base)
    assert (got["wins"], got["losses"], got["ties"]) == (10, 0, 0)
    assert got["ci"][0] > 0 and got["p_value"] == pytest.approx(2 / 1024)  # only all-kept and all-flipped reach
    assert describe_comparison("reranker", "bm25", "nDCG@10", got).endswith("better")
    assert describe_comparison("bm25", "reranker", "nDCG@10", paired_comparison(base, better)).endswith("worse")
    same = paired_comparison(base, base)
    assert same["p_value"] == 1.0 and same["ties"] == 10 and same["ci"] == [0.0, 0.0]
    with pytest.raises(ProrankError, match="same queries"):
        paired_comparison({"q1": 1.0}, {"q2": 1.0})
    with pytest.raises(ProrankError, match="at least one query"):
        paired_comparison({}, {})
