"""trec_eval metrics and run files (evaluation/metrics.py), checked by hand."""

from __future__ import annotations

import math

import pytest

from prorank_edge.errors import InputError
from prorank_edge.evaluation.metrics import evaluate_run, write_trec_run


def test_metrics_by_hand():
    qrels = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d5": 1}, "q3": {"d9": 1}}
    run = {
        # ranks: d4 (not judged), d2 (grade 1), d1 (grade 2), d3 (grade 0)
        "q1": {"d4": 0.9, "d2": 0.8, "d1": 0.7, "d3": 0.1},
        # the only relevant document at rank 11: outside every @10 cutoff, inside recall@100
        "q2": {**{f"x{i}": 10.0 - i for i in range(10)}, "d5": -1.0},
        "q_unjudged": {"d1": 1.0},  # ignored
        # q3 has no run at all: it scores 0 and still counts in the mean
    }
    result = evaluate_run(qrels, run, k_values=(10,), recall_k=100)
    # trec_eval nDCG: linear gain, log2(rank + 1) discount
    ndcg_q1 = (1 / math.log2(3) + 2 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
    per_query = result["per_query"]
    assert per_query["ndcg@10"] == pytest.approx({"q1": ndcg_q1, "q2": 0.0, "q3": 0.0})
    assert per_query["mrr@10"] == pytest.approx({"q1": 1 / 2, "q2": 0.0, "q3": 0.0})
    assert per_query["recall@100"] == pytest.approx({"q1": 1.0, "q2": 1.0, "q3": 0.0})
    assert result["mean"] == pytest.approx({"ndcg@10": ndcg_q1 / 3, "mrr@10": 0.5 / 3, "recall@100": 2 / 3})


def test_mrr_cutoff_breaks_ties_as_trec_eval():
    # equal scores: trec_eval ranks the larger doc id first, so "b" is rank 1 and survives a cutoff of 1
    result = evaluate_run({"q": {"b": 1}}, {"q": {"a": 1.0, "b": 1.0}}, k_values=(1,), recall_k=1)
    assert result["mean"] == {"ndcg@1": 1.0, "mrr@1": 1.0, "recall@1": 1.0}


def test_write_trec_run(tmp_path):
    path = tmp_path / "run.txt"
    assert write_trec_run(path, {"q1": {"a": 0.5, "b": 2.0}, "q2": {"c": -1.25}}, tag="bm25") == 3
    assert path.read_text().splitlines() == [
        "q1 Q0 b 1 2.0 bm25", "q1 Q0 a 2 0.5 bm25", "q2 Q0 c 1 -1.25 bm25",
    ]
    with pytest.raises(InputError, match="whitespace"):
        write_trec_run(path, {"q 1": {"a": 1.0}}, tag="bm25")
