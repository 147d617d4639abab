"""End to end with the real SmolLM2-135M-Instruct: rerank SciFact BM25 candidates from the command line."""

import json

import pytest
from click.testing import CliRunner
from conftest import requires_torch

from prorank_edge.cli import main

pytestmark = requires_torch


def test_rerank_scifact_candidates_with_real_model(smollm2_dir, scifact_dir, tmp_path):
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.evaluation.bm25 import BM25Retriever

    data = load_beir(scifact_dir, "test")
    qid = next(iter(data.queries))
    doc_ids, _ = BM25Retriever(data.corpus).retrieve([data.queries[qid]], 8)
    docs = tmp_path / "candidates.jsonl"
    with docs.open("w") as handle:
        for doc_id in doc_ids[0]:
            doc = data.corpus[doc_id]
            handle.write(json.dumps({"_id": doc_id, "title": doc.title, "text": doc.text}) + "\n")
    result = CliRunner().invoke(main, ["rerank", "-q", data.queries[qid], "--docs", str(docs), "--model",
                                       str(smollm2_dir), "--output", "json", "--max-length", "256"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert sorted(r["id"] for r in payload["results"]) == sorted(doc_ids[0])
    scores = [r["score"] for r in payload["results"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1


@pytest.mark.slow
def test_eval_command_with_real_model(smollm2_dir, scifact_dir):
    result = CliRunner().invoke(main, ["eval", "--data", str(scifact_dir), "--model", str(smollm2_dir),
                                       "--max-queries", "2", "--top-k", "5", "--max-length", "256",
                                       "--output", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert set(report["metrics"]) == {"bm25", "reranker"}
    assert report["counts"]["pairs_scored"] == 10
    for system in report["metrics"].values():
        assert 0.0 <= system["ndcg@10"] <= 1.0
