"""The bench report (benchmarks/report.py): the Pareto front of accuracy against speed."""

from __future__ import annotations

from conftest import requires_torch

pytestmark = requires_torch


def test_pareto_front_keeps_only_undominated_points():
    from prorank_edge.benchmarks.report import pareto_front

    points = [(1.0, 0.5), (2.0, 0.4), (1.5, 0.3), (3.0, 0.1), (0.5, 0.5)]
    assert pareto_front(points) == [0, 1, 3]
