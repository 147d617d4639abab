"""Fusion of reranker and first-stage scores: the arithmetic, the weight tuning, and both commands."""

import json

import pytest
from click.testing import CliRunner
from conftest import requires_torch

from prorank_edge.cli import main
from prorank_edge.errors import ProrankError
from prorank_edge.evaluation.evaluate import Candidate, EvalReport, add_fusion, tune_fusion_weight
from prorank_edge.fusion import fuse_scores, minmax


def test_fuse_scores_arithmetic():
    bm25 = [10.0, 20.0, 30.0]      # min-max -> 0, 0.5, 1
    rerank = [4.0, 2.0, 0.0]       # min-max -> 1, 0.5, 0
    assert fuse_scores(bm25, rerank, 0.25).tolist() == pytest.approx([0.25, 0.5, 0.75])
    assert fuse_scores(bm25, rerank, 1.0).tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert minmax([3.0, 3.0]).tolist() == [0.5, 0.5]
    with pytest.raises(ProrankError):
        fuse_scores(bm25, rerank, 1.5)


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


def test_rerank_fusion_needs_scores(tmp_path):
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"id": "a", "text": "x", "score": 1.5}\n{"id": "b", "text": "y"}\n')
    result = CliRunner().invoke(main, ["rerank", "-q", "q", "-d", str(docs), "--fusion-weight", "0.5"])
    assert result.exit_code == 2 and "d.jsonl:2: field 'score' is missing" in result.output


@requires_torch
def test_rerank_fusion_weight_zero_keeps_first_stage_order(tiny_qwen2_dir, tmp_path):
    docs = tmp_path / "d.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": f"text {i} " * (i + 1), "score": float(s)})
             for i, s in enumerate([3, 9, 1, 7, 5])]
    docs.write_text("\n".join(lines) + "\n")
    base = ["rerank", "-q", "q", "-d", str(docs), "-m", str(tiny_qwen2_dir), "--dtype", "float32", "-o", "json"]
    first_stage = json.loads(CliRunner().invoke(main, base + ["--fusion-weight", "0"]).output)
    assert [r["id"] for r in first_stage["results"]] == ["d1", "d3", "d4", "d0", "d2"]
    alone = json.loads(CliRunner().invoke(main, base).output)
    fused_one = json.loads(CliRunner().invoke(main, base + ["--fusion-weight", "1"]).output)
    assert [r["id"] for r in fused_one["results"]] == [r["id"] for r in alone["results"]]
    assert all("rerank_score" in r for r in fused_one["results"])


@requires_torch
def test_eval_fusion_auto_tunes_on_train(tiny_qwen2_dir, scifact_dir):
    base = ["eval", "--data", str(scifact_dir), "-m", str(tiny_qwen2_dir), "--dtype", "float32",
            "--max-queries", "3", "--top-k", "5", "--quiet"]
    result = CliRunner().invoke(main, base + ["--fusion-weight", "auto", "--tune-queries", "3", "--output", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report["metrics"]) == {"bm25", "reranker", "fusion"}
    assert report["fusion"]["tuned_on"] == "train" and report["fusion"]["tune_queries"] == 3
    assert report["fusion"]["weight"] in [float(w) for w in report["fusion"]["ndcg@10_by_weight"]]
    bad = CliRunner().invoke(main, base + ["--fusion-weight", "auto", "--tune-split", "test"])
    assert bad.exit_code == 2 and "--tune-split must differ" in bad.output


@requires_torch
def test_a_contract_fusion_weight_applies_only_when_every_document_has_a_score(tiny_qwen2_dir, scifact_dir,
                                                                              tmp_path):
    import shutil

    from prorank_edge.contract import ScoringContract

    model = tmp_path / "model"
    shutil.copytree(tiny_qwen2_dir, model)
    ScoringContract.load(model).replace(extra={"fusion_weight": 0.0}).save(model)
    scored, unscored = tmp_path / "scored.jsonl", tmp_path / "unscored.jsonl"
    scored.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text {i} " * (i + 1), "score": float(s)}) + "\n"
                              for i, s in enumerate([3, 9, 1, 7, 5])))
    unscored.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text {i} " * (i + 1)}) + "\n" for i in range(5)))
    base = ["rerank", "-q", "q", "-m", str(model), "--dtype", "float32", "-o", "json"]
    fused = json.loads(CliRunner().invoke(main, base + ["-d", str(scored)]).output)
    assert fused["fusion_weight"] == 0.0  # the contract's weight: the first stage's order
    assert [r["id"] for r in fused["results"]] == ["d1", "d3", "d4", "d0", "d2"]
    alone = json.loads(CliRunner().invoke(main, base + ["-d", str(unscored)]).output)
    assert alone["fusion_weight"] is None and "rerank_score" not in alone["results"][0]
    overridden = json.loads(CliRunner().invoke(main, base + ["-d", str(scored), "--fusion-weight", "1"]).output)
    assert [r["id"] for r in overridden["results"]] == [r["id"] for r in alone["results"]]

    result = CliRunner().invoke(main, ["eval", "--data", str(scifact_dir), "-m", str(model), "--dtype", "float32",
                                       "--max-queries", "2", "--top-k", "5", "--quiet", "--output", "json"])
    report = json.loads(result.output)
    assert report["fusion"] == {"weight": 0.0, "from": "model contract"}
    assert report["metrics"]["fusion"]["ndcg@10"] == pytest.approx(report["metrics"]["bm25"]["ndcg@10"])

