"""The BM25 first stage (evaluation/bm25.py): stemming, k beyond the corpus, and SciFact's published nDCG@10."""

from __future__ import annotations

from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.evaluation.evaluate import evaluate_reranker


def test_bm25_stems_and_handles_k_beyond_corpus(tiny_beir):
    data = load_beir(tiny_beir)
    retriever = BM25Retriever(data.corpus)
    doc_ids, scores = retriever.retrieve(["injured runner", "the of and", "zzzunknownword"], k=100)
    assert scores.shape == (3, 10)
    assert all(sorted(ids) == sorted(data.corpus) for ids in doc_ids)  # every document once
    # only stemming makes "injured runner" match "injure ... Runners" in d2
    assert doc_ids[0][0] == "d2" and scores[0][0] > 0
    assert list(scores[0]) == sorted(scores[0], reverse=True)
    assert not scores[1].any() and not scores[2].any()  # stopwords only / unknown words: all zero, no error


def test_bm25_ndcg_on_scifact(scifact_test):
    report = evaluate_reranker(scifact_test, top_k=100, show_progress=False)
    bm25 = report.metrics["bm25"]
    assert report.queries == 300
    assert abs(bm25["ndcg@10"] - 0.686) <= 0.01, bm25
    assert 0.5 < bm25["mrr@10"] < bm25["recall@100"] <= 1.0
    assert "reranker" not in report.metrics
