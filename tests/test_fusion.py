"""Fusion of reranker and first-stage scores (fusion.py): the min-max arithmetic."""

import pytest

from prorank_edge.errors import ProrankError
from prorank_edge.fusion import fuse_scores, minmax


def test_fuse_scores_arithmetic():
    bm25 = [10.0, 20.0, 30.0]      # min-max -> 0, 0.5, 1
    rerank = [4.0, 2.0, 0.0]       # min-max -> 1, 0.5, 0
    assert fuse_scores(bm25, rerank, 0.25).tolist() == pytest.approx([0.25, 0.5, 0.75])
    assert fuse_scores(bm25, rerank, 1.0).tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert minmax([3.0, 3.0]).tolist() == [0.5, 0.5]
    with pytest.raises(ProrankError):
        fuse_scores(bm25, rerank, 1.5)
