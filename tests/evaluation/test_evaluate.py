"""Reranking evaluation (evaluation/evaluate.py): every query reranked over its BM25 candidates, the report, and
the fusion weight's tuning."""

from __future__ import annotations

import json

import pytest

from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import (
    Candidate,
    EvalReport,
    add_fusion,
    evaluate_reranker,
    tune_fusion_weight,
    weight_to_store,
)


def test_evaluate_reranker_with_tiny_model(tiny_beir, tiny_qwen2_dir, tmp_path):
    from prorank_edge import Reranker

    data = load_beir(tiny_beir)
    run_file = tmp_path / "reranked.txt"
    with Reranker(str(tiny_qwen2_dir), dtype="float32") as reranker:
        reranker.predict([("an earlier query", "an earlier document")])  # not this evaluation's tokens
        report = evaluate_reranker(data, reranker, top_k=5, show_progress=False, run_file=str(run_file))
        q1_cands = report.candidates["q1"]
        prompt_ids = [ids for qid, cands in report.candidates.items() for ids in
                      reranker.prompts.build(data.queries[qid], [data.corpus[c.doc_id].full_text for c in cands])]
        expected = reranker.predict([(data.queries["q1"], data.corpus[c.doc_id].full_text) for c in q1_cands])

    assert list(report.metrics) == ["bm25", "reranker"]
    for values in report.metrics.values():
        assert list(values) == ["ndcg@10", "mrr@10", "recall@5"]
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert report.pairs_scored == 3 * 5
    assert report.model["max_length"] and report.model["batch_size"] == 16
    # the tokens of this evaluation's 15 prompts, counted after the reranking (not a snapshot taken before it)
    assert report.model["prompt_tokens"] == sum(len(ids) for ids in prompt_ids)
    assert 0 < report.model["computed_tokens"] < report.model["prompt_tokens"]
    assert report.model["computed_share"] == round(report.model["computed_tokens"] / report.model["prompt_tokens"], 4)
    for qid in data.queries:  # every query reranked, over exactly its BM25 candidates
        cands = report.candidates[qid]
        assert len(cands) == 5 and all(c.rerank_score is not None for c in cands)
        ranked = sorted(c.doc_id for c in cands)
        assert sorted(report.runs["reranker"][qid]) == sorted(report.runs["bm25"][qid]) == ranked
    # each score went to the candidate it belongs to
    assert [c.rerank_score for c in q1_cands] == pytest.approx(list(map(float, expected)), abs=1e-4)
    # recall only depends on the candidate set, which reranking does not change
    assert report.metrics["reranker"]["recall@5"] == report.metrics["bm25"]["recall@5"]
    assert len(run_file.read_text().splitlines()) == 15

    summary = json.loads(json.dumps(report.to_dict()))
    assert summary["counts"] == {"queries": 3, "corpus": 10, "candidates": 15, "pairs_scored": 15}
    assert summary["timing"]["pairs_per_s"] > 0
    table = report.format_table().splitlines()
    assert table[1].split() == ["system", "nDCG@10", "MRR@10", "Recall@5"]
    assert [row.split()[0] for row in table[3:5]] == ["bm25", "reranker"]


def test_max_queries_takes_the_first_queries(tiny_beir):
    report = evaluate_reranker(load_beir(tiny_beir), top_k=3, max_queries=2, show_progress=False)
    assert list(report.candidates) == ["q3", "q1"] and report.queries == 2
    assert report.to_dict()["counts"]["candidates"] == 6


# ---- fusion --------------------------------------------------------------------------------------------

def _report(reranker_right: bool) -> EvalReport:
    """Two queries, three candidates each; the judged doc is 'good'. BM25 or the reranker gets it right."""
    qrels = {"q1": {"good": 1}, "q2": {"good": 1}}
    if reranker_right:  # the reranker puts 'good' first, BM25 puts it last
        cands = [("good", 1.0, 3.0), ("meh", 2.0, 2.0), ("bad", 3.0, 1.0)]
    else:
        cands = [("good", 3.0, 1.0), ("meh", 2.0, 2.0), ("bad", 1.0, 3.0)]
    candidates = {qid: [Candidate(*c) for c in cands] for qid in qrels}
    return EvalReport(dataset="toy", split="dev", top_k=3, qrels=qrels, candidates=candidates, corpus_size=3)


def test_tuning_follows_the_better_system():
    weight, grid = tune_fusion_weight(_report(reranker_right=True))
    assert weight > 0.5 and grid[1.0] == pytest.approx(1.0) and grid[0.0] < 1.0
    weight, grid = tune_fusion_weight(_report(reranker_right=False))
    assert weight < 0.5 and grid[0.0] == pytest.approx(1.0)
    report = _report(reranker_right=True)
    assert add_fusion(report, 1.0)["ndcg@10"] == pytest.approx(1.0)
    assert "fusion" in report.format_table()


def test_a_flat_tuning_grid_stores_no_weight_and_a_winning_zero_is_flagged():
    """Both systems perfect (as on one dev query): every weight ties, and the tie rule's 0.0 must not become a
    contract weight that silently keeps BM25's order; a 0.0 that wins is kept, with a caution."""
    qrels = {"q1": {"good": 1}}
    perfect = EvalReport(dataset="toy", split="dev", top_k=3, qrels=qrels, corpus_size=3,
                         candidates={"q1": [Candidate("good", 3.0, 3.0), Candidate("bad", 1.0, 1.0)]})
    weight, grid = tune_fusion_weight(perfect)
    assert weight == 0.0 and len(set(grid.values())) == 1
    stored, note = weight_to_store(weight, grid)
    assert stored is None and "alike" in note and "more queries" in note
    weight, grid = tune_fusion_weight(_report(reranker_right=False))
    stored, note = weight_to_store(weight, grid)
    assert stored == 0.0 and "BM25's order" in note
    weight, grid = tune_fusion_weight(_report(reranker_right=True))
    assert weight_to_store(weight, grid) == (weight, None)
