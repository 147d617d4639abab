"""Is one system better than another on these queries, or is it the draw of queries? A paired comparison.

Two rankings of the same judged queries differ per query; their mean difference comes with a 95% bootstrap
interval over the queries (percentile method) and a two-sided paired randomization test (each query's
difference kept or sign-flipped at random, the test Smucker, Allan and Carterette 2007 recommend for IR).
Numbers to keep in mind, measured in issue 19: on 100 SciFact dev queries the interval between two rerankers
was about +-0.044 nDCG@10, on 300 test queries about +-0.03, so a lead of 0.01 there says nothing.

numpy only; tests/evaluation/test_significance.py checks both against scipy.stats.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import ProrankError

#: below this many sign patterns (2**queries) the randomization test enumerates all of them (exact p-value)
EXACT_SIGN_PATTERNS = 1 << 16
#: resampled values held at once (16 MB of float64 or int64)
CHUNK_VALUES = 2_000_000


def paired_comparison(system: Mapping[str, float], baseline: Mapping[str, float], resamples: int = 10_000,
                      seed: int = 0, confidence: float = 0.95) -> dict:
    """Per-query values of one metric for `system` and `baseline` (the same query ids) -> their difference.

    Returns {"queries", "mean", "baseline_mean", "diff", "ci": [low, high], "confidence", "p_value", "wins",
    "losses", "ties"}; "diff" is system - baseline, so a positive interval means the system is better.
    """
    if set(system) != set(baseline):
        missing = sorted(set(system) ^ set(baseline))
        raise ProrankError(f"a paired comparison needs the same queries on both sides; {len(missing)} differ "
                           f"(e.g. {missing[0]!r})")
    if not system:
        raise ProrankError("a paired comparison needs at least one query")
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ProrankError(f"resamples must be >= 1 and confidence in (0, 1), got {resamples} and {confidence}")
    qids = sorted(system)
    diff = np.array([system[q] - baseline[q] for q in qids], dtype=np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_VALUES // len(diff))  # 10,000 resamples of 7,000 queries would be 560 MB of indices
    means = np.concatenate([diff[rng.integers(0, len(diff), size=(min(chunk, resamples - start), len(diff)))]
                            .mean(axis=1) for start in range(0, resamples, chunk)])
    tail = (1.0 - confidence) / 2 * 100
    return {
        "queries": len(qids),
        "mean": float(np.mean([system[q] for q in qids])),
        "baseline_mean": float(np.mean([baseline[q] for q in qids])),
        "diff": float(diff.mean()),
        "ci": [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))],
        "confidence": confidence,
        "p_value": randomization_p_value(diff, resamples, rng),
        "wins": int((diff > 0).sum()),
        "losses": int((diff < 0).sum()),
        "ties": int((diff == 0).sum()),
    }


def randomization_p_value(diff: np.ndarray, resamples: int, rng: np.random.Generator) -> float:
    """Two-sided sign-flip test of mean(diff) = 0: exact over all 2**n sign patterns when there are at most
    EXACT_SIGN_PATTERNS of them, else Monte Carlo with the observed pattern counted ((hits + 1) / (R + 1))."""
    n = len(diff)
    observed = abs(diff.mean())
    # A flipped mean equal to the observed one up to float rounding counts as reaching it.
    reach = observed * (1 - 1e-12) - 1e-15
    if (1 << n) <= EXACT_SIGN_PATTERNS:
        patterns = ((np.arange(1 << n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        return float(np.mean(np.abs(patterns @ diff) / n >= reach))
    hits, done = 0, 0
    while done < resamples:
        size = min(resamples - done, max(1, CHUNK_VALUES // n))
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
        hits += int(np.sum(np.abs(signs @ diff) / n >= reach))
        done += size
    return (hits + 1) / (resamples + 1)


def describe_comparison(name: str, baseline: str, metric: str, comparison: dict) -> str:
    """One line for a table: 'reranker - bm25  nDCG@10 +0.0123  95% [-0.0180, +0.0440]  p 0.43  63 won, 66 lost'."""
    low, high = comparison["ci"]
    verdict = ("better" if low > 0 else "worse" if high < 0 else "not distinguishable")
    return (f"{name} - {baseline}  {metric} {comparison['diff']:+.4f}  {comparison['confidence']:.0%} "
            f"[{low:+.4f}, {high:+.4f}]  p {comparison['p_value']:.3g}  {comparison['wins']} won, "
            f"{comparison['losses']} lost of {comparison['queries']}: {verdict}")
