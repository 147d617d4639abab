"""Evidence runs (train/evidence.py): pairwise AUC, and label pairs that are balanced, held out, and never call
a judged document negative."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_topics_beir

pytest.importorskip("yaml")

from prorank_edge.train.config import DataConfig  # noqa: E402
from prorank_edge.train.data import from_beir  # noqa: E402


def test_pairwise_auc_counts_ordered_pairs_and_half_the_ties():
    from prorank_edge.train.evidence import pairwise_auc

    labels = np.array([1, 0, 1, 0])
    assert pairwise_auc(np.array([3.0, 1.0, 2.0, 0.0]), labels) == 1.0
    assert pairwise_auc(np.array([0.0, 1.0, 2.0, 3.0]), labels) == 0.25
    # A constant offset changes the sign of every score, not the order: sign accuracy moves, AUC does not.
    assert pairwise_auc(np.array([3.0, 1.0, 2.0, 0.0]) - 10, labels) == 1.0
    assert pairwise_auc(np.array([1.0, 1.0, 2.0, 0.0]), labels) == 0.875
    assert pairwise_auc(np.array([1.0, 2.0]), np.array([1, 1])) is None


def test_label_pairs_are_balanced_held_out_and_never_call_a_judged_document_negative(tmp_path):
    pytest.importorskip("bm25s")
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.train.evidence import label_pairs, label_pools

    root = write_topics_beir(tmp_path / "beir")
    data = load_beir(root, "train")
    dev = from_beir(data, DataConfig(dev_queries=4, max_train_queries=0), seed=0).dev  # training's split
    by_query = {q.query: q for q in dev}
    text_to_id = {doc.full_text: doc_id for doc_id, doc in data.corpus.items()}
    for kind in ("hard", "random"):
        # The whole pools: each query has one document judged 0 among its BM25 candidates, never a negative.
        positives, negatives = label_pools(str(root), "train", dev_queries=4, seed=0, negatives=kind)
        assert len(positives) == 8 and len(negatives) >= 8
        for pool, is_positive in ((positives, True), (negatives, False)):
            for query, document in pool:
                assert query in by_query  # only the held-out queries
                grade = by_query[query].qrels.get(text_to_id[document])
                assert (grade is not None and grade > 0) if is_positive else grade is None
        if kind == "hard":
            assert {text_to_id[d] for _, d in negatives} <= {c.doc_id for q in dev for c in q.candidates}
        pairs = label_pairs(str(root), "train", dev_queries=4, pairs=12, seed=0, negatives=kind)
        assert sorted(label for _, _, label in pairs) == [0] * 6 + [1] * 6
        assert {(q, d) for q, d, label in pairs if label} <= set(positives)
        assert {(q, d) for q, d, label in pairs if not label} <= set(negatives)
    with pytest.raises(ValueError, match="hard' or 'random"):
        label_pairs(str(root), "train", dev_queries=4, pairs=8, seed=0, negatives="easy")
