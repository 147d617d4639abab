"""`prorank-edge eval`: BM25 only (JSON, run file, no torch), with a tiny model, its errors, and the fusion weight
tuned on the training split."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import requires_torch

from prorank_edge.cli import main
from prorank_edge.commands.eval_cmd import eval_command
from prorank_edge.errors import InputError, ProrankError
from prorank_edge.evaluation.beir import load_beir


def test_eval_command_bm25_only_json_and_run_file(scifact_dir, tmp_path):
    run_file = tmp_path / "bm25.run"
    result = CliRunner().invoke(eval_command, [
        "--data", str(scifact_dir), "--bm25-only", "--output", "json", "--max-queries", "20",
        "--run-file", str(run_file), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert 0.0 < summary["metrics"]["bm25"]["ndcg@10"] <= 1.0
    assert summary["counts"]["queries"] == 20 and summary["model"] is None
    lines = run_file.read_text().splitlines()
    assert len(lines) == 20 * 100  # the default --top-k
    qid, q0, docid, rank, score, tag = lines[0].split()
    assert (qid, q0, rank, tag) == ("1", "Q0", "1", "prorank-edge-bm25") and docid in load_beir(scifact_dir).corpus
    float(score)


def test_eval_command_table_with_tiny_model(tiny_beir, tiny_qwen2_dir):
    result = CliRunner().invoke(eval_command, [
        "--data", str(tiny_beir), "--model", str(tiny_qwen2_dir), "--top-k", "4", "--batch-size", "3", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    rows = [line.split()[0] for line in result.stdout.splitlines()[3:5]]
    assert rows == ["bm25", "reranker"]


def test_eval_command_errors_are_prorank_errors(tiny_beir):
    runner = CliRunner()
    result = runner.invoke(eval_command, ["--data", str(tiny_beir), "--bm25-only", "--model", "x"])
    assert isinstance(result.exception, ProrankError) and "--bm25-only" in str(result.exception)
    result = runner.invoke(eval_command, ["--data", str(tiny_beir), "--split", "train", "--bm25-only"])
    assert isinstance(result.exception, InputError) and "splits here: dev, test" in str(result.exception)


def test_bm25_only_does_not_import_torch(tiny_beir):
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from prorank_edge.commands.eval_cmd import eval_command\n"
        f"result = CliRunner().invoke(eval_command, ['--data', {str(tiny_beir)!r}, '--bm25-only', '--quiet'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


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
    grid = set(report["fusion"]["ndcg@10_by_weight"].values())  # a flat grid or a 0.0 pick is flagged
    assert ("note" in report["fusion"]) == (len(grid) == 1 or report["fusion"]["weight"] == 0.0)
    assert set(report["vs_bm25"]) == {"reranker", "fusion"}  # each system against BM25, query by query
    assert report["vs_bm25"]["reranker"]["diff"] == pytest.approx(
        report["metrics"]["reranker"]["ndcg@10"] - report["metrics"]["bm25"]["ndcg@10"])
    bad = CliRunner().invoke(main, base + ["--fusion-weight", "auto", "--tune-split", "test"])
    assert bad.exit_code == 2 and "--tune-split must differ" in bad.output


def test_eval_reads_a_run_file_back(scifact_dir, tmp_path):
    """What `eval --run-file` (or `batch --trec-out`) wrote scores the same through `eval --run`."""
    run_file = tmp_path / "bm25.run"
    written = CliRunner().invoke(main, ["eval", "--data", str(scifact_dir), "--bm25-only", "--max-queries", "30",
                                        "--top-k", "50", "--run-file", str(run_file), "--output", "json", "--quiet"])
    assert written.exit_code == 0, written.output
    expected = json.loads(written.stdout)["metrics"]["bm25"]
    read = CliRunner().invoke(main, ["eval", "--data", str(scifact_dir), "--run", str(run_file), "--max-queries", "30",
                                     "--top-k", "50", "--output", "json", "--quiet"])
    assert read.exit_code == 0, read.output
    summary = json.loads(read.stdout)
    assert summary["queries"] == summary["queries_in_run"] == 30
    assert summary["metrics"] == expected
    bad = tmp_path / "bad.run"
    bad.write_text(run_file.read_text().splitlines()[0] + "\n1 Q0 4983 2 not-a-number tag\n")
    result = CliRunner().invoke(main, ["eval", "--data", str(scifact_dir), "--run", str(bad)])
    assert result.exit_code == 2 and f"{bad}:2: score 'not-a-number' is not a number" in result.output
    both = CliRunner().invoke(main, ["eval", "--data", str(scifact_dir), "--run", str(run_file), "--bm25-only"])
    assert both.exit_code == 2 and "--run evaluates a run file alone" in both.output


def test_eval_compares_a_run_with_a_baseline_query_by_query(scifact_dir, tmp_path):
    """`eval --run A --baseline B`: both runs' metrics and, per metric, the paired comparison of their per-query
    values (the same numbers significance.paired_comparison gives); a run against itself ties everywhere."""
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.evaluation.metrics import evaluate_run, read_trec_run
    from prorank_edge.evaluation.significance import paired_comparison

    runs = {}
    for depth in (5, 50):  # the same BM25 order, cut at 5 and at 50
        runs[depth] = tmp_path / f"bm25_{depth}.run"
        written = CliRunner().invoke(main, ["eval", "--data", str(scifact_dir), "--bm25-only", "--max-queries", "30",
                                            "--top-k", str(depth), "--run-file", str(runs[depth]), "--quiet"])
        assert written.exit_code == 0, written.output
    args = ["eval", "--data", str(scifact_dir), "--max-queries", "30", "--top-k", "50", "--quiet"]
    result = CliRunner().invoke(main, args + ["--run", str(runs[5]), "--baseline", str(runs[50]), "--output", "json"])
    assert result.exit_code == 0, result.output
    compared = json.loads(result.stdout)["baseline"]["comparison"]
    data = load_beir(scifact_dir, "test")
    qrels = {q: data.qrels[q] for q in list(data.queries)[:30]}
    per_query = {d: evaluate_run(qrels, read_trec_run(runs[d]), k_values=(10,), recall_k=50)["per_query"]
                 for d in runs}
    for key in ("ndcg@10", "recall@50"):
        assert compared[key] == paired_comparison(per_query[5][key], per_query[50][key])
    for key in ("ndcg@10", "recall@50"):  # the same order cut at 5 can lose, never win
        assert compared[key]["wins"] == 0 and compared[key]["losses"] > 0 and compared[key]["diff"] < 0
    table = CliRunner().invoke(main, args + ["--run", str(runs[50]), "--baseline", str(runs[50])])
    assert table.exit_code == 0 and "run - baseline  nDCG@10 +0.0000" in table.output
    assert "0 won, 0 lost of 30: not distinguishable" in table.output
    alone = CliRunner().invoke(main, args + ["--baseline", str(runs[50])])
    assert alone.exit_code == 2 and "--baseline compares two run files" in alone.output


@requires_torch
def test_eval_run_system_picks_the_run_written(tiny_qwen2_dir, scifact_dir, tmp_path):
    """--run-system reranker writes the reranker's own run even when fusion is reported after it; the file reads
    back through --run to the reranker's metrics."""
    run_file = tmp_path / "reranker.trec"
    base = ["eval", "--data", str(scifact_dir), "-m", str(tiny_qwen2_dir), "--dtype", "float32", "--max-queries", "3",
            "--top-k", "5", "--quiet", "--fusion-weight", "0.5"]
    result = CliRunner().invoke(main, base + ["--run-file", str(run_file), "--run-system", "reranker",
                                              "--output", "json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    read = CliRunner().invoke(main, ["eval", "--data", str(scifact_dir), "--run", str(run_file), "--max-queries", "3",
                                     "--top-k", "5", "--output", "json", "--quiet"])
    assert json.loads(read.stdout)["metrics"] == pytest.approx(metrics["reranker"])
    assert "prorank-edge-reranker" in run_file.read_text().splitlines()[0]
    lone = CliRunner().invoke(main, base + ["--run-system", "fusion"])
    assert lone.exit_code == 2 and "give --run-file too" in lone.output
    bm25 = CliRunner().invoke(main, ["eval", "--data", str(scifact_dir), "--bm25-only", "--run-file",
                                     str(tmp_path / "x.trec"), "--run-system", "reranker"])
    assert bm25.exit_code == 2 and "--bm25-only has no reranker run" in bm25.output
