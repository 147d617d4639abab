"""The parity statistics an export reports (export/parity.py): Spearman with ties, top-k agreement, drift."""

import numpy as np
import pytest

from prorank_edge.export.parity import builtin_pairs, groups_by_query, parity_summary, spearman, top_k_agreement


def test_spearman_matches_scipy_and_handles_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    b = a + rng.normal(scale=0.5, size=50)
    b[:10] = 0.0  # ties
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_parity_summary_and_top_k():
    ref = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    swapped = np.array([5.0, 4.0, 3.0, 2.0, 0.0, 1.0])  # the last two swap places
    groups = [[0, 1, 2], [3, 4, 5]]
    assert top_k_agreement(ref, swapped, groups, k=2) == pytest.approx(0.75)  # {3,4} vs {3,5}
    summary = parity_summary(ref, swapped, groups, k=2)
    assert summary["max_abs_drift"] == pytest.approx(1.0)
    assert summary["spearman"] == pytest.approx(1 - 6 * 2 / (6 * 35))
    pairs = builtin_pairs()
    assert len(groups_by_query(pairs)) == 6 and all(len(g) == 12 for g in groups_by_query(pairs))
