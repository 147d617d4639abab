"""`prorank-edge batch` with the local engine on a tiny random Qwen2: the rows are what rank_documents gives for
each query, bad lines are reported and skipped (exit 2), N processes give the same bytes as one, and a job
killed with SIGKILL half-way, then stopped again by SIGTERM, resumes to the uninterrupted output."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import requires_torch, write_tiny_beir

from prorank_edge.batch.inputs import Checks, input_spec, read_jsonl
from prorank_edge.batch.job import BatchJob, run_job
from prorank_edge.batch.outputs import read_output
from prorank_edge.batch.scoring import ScoringSpec
from prorank_edge.cli import main
from prorank_edge.evaluation.metrics import read_trec_run

pytestmark = requires_torch

WORDS = ("cells proteins trial dose sleep coffee knee vaccine virus immune memory light fish bread yeast tea "
         "sugar water plant ash").split()


def write_queries(path: Path, queries: int, candidates: int, bad: bool = False) -> Path:
    """Deterministic queries; every third has no first-stage scores, and texts vary in length (uneven batches)."""
    lines = []
    for q in range(queries):
        cands = []
        for k in range(candidates):
            words = [WORDS[(q * 7 + k * 3 + i) % len(WORDS)] for i in range(3 + (q + 5 * k) % 40)]
            cand = {"id": f"q{q}d{k}", "text": " ".join(words)}
            if q % 3:
                cand["score"] = float((q * 13 + k * 7) % 11)
            if k == 1:
                cand["title"] = f"title {k}"
            cands.append(cand)
        lines.append(json.dumps({"query_id": f"q{q}", "query": f"{WORDS[q % len(WORDS)]} and {WORDS[q // 2 % 20]}",
                                 "candidates": cands}))
    if bad:
        lines.insert(2, '{"query_id": "broken", "query": "no closing brace", "candidates": []')
        lines.insert(5, json.dumps({"query_id": "q1", "query": "a repeated id", "candidates": []}))
        lines.append(json.dumps({"query_id": "notext", "query": "x", "candidates": [{"id": "a"}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def model_args(model_dir) -> list[str]:
    return ["--model", str(model_dir), "--device", "cpu", "--dtype", "float32", "--threads", "1"]


def spec_for(model_dir) -> ScoringSpec:
    return ScoringSpec(model=str(model_dir), device="cpu", dtype="float32", threads=1)


def cli(args: list[str]):
    return CliRunner().invoke(main, ["batch", *args])


def pairs_of(rows) -> list[tuple[str, str]]:
    return [(r["query_id"], r["doc_id"]) for r in rows]


@pytest.fixture(scope="module")
def queries_file(tmp_path_factory) -> Path:
    return write_queries(tmp_path_factory.mktemp("batch_in") / "queries.jsonl", 30, 6)


@pytest.fixture(scope="module")
def uninterrupted(tiny_qwen2_dir, queries_file, tmp_path_factory) -> Path:
    """One in-process local run, the output every other run must reproduce."""
    output = tmp_path_factory.mktemp("batch_ref") / "ranked.jsonl"
    run_job(BatchJob(input=input_spec(str(queries_file)), output=output, spec=spec_for(tiny_qwen2_dir),
                     shard_size=4, progress=False))
    return output


def test_rows_are_rank_documents_for_each_query_and_bad_lines_are_reported(tiny_qwen2_dir, tmp_path, uninterrupted):
    from prorank_edge.reranker import Reranker, rank_documents

    source = write_queries(tmp_path / "in.jsonl", 30, 6, bad=True)
    output, trec = tmp_path / "out" / "ranked.parquet", tmp_path / "out" / "ranked.trec"
    result = cli(["-i", str(source), "-o", str(output), "--trec-out", str(trec), "--shard-size", "4", "--no-progress",
                  *model_args(tiny_qwen2_dir)])
    assert result.exit_code == 2, result.output
    summary = json.loads(result.stdout)
    assert [(s["line"], s["query_id"]) for s in summary["skipped"]] == [(3, "broken"), (6, "q1"), (33, "notext")]
    assert "error: skipped 3 bad input entries" in result.stderr
    assert f"{source}:3 (query 'broken'): invalid JSON" in result.stderr
    assert summary["queries"] == 30 and summary["pairs"] == 180 and summary["shards"]["total"] == 8
    assert summary["per_worker"][0]["pairs"] == 180 and summary["per_worker"][0]["pairs_per_s"] > 0

    rows = read_output(output)
    assert list(rows[0]) == ["query_id", "doc_id", "rank", "score", "rerank_score", "first_stage_score"]
    assert rows == read_output(uninterrupted)  # the bad lines changed nothing else
    assert len(set(pairs_of(rows))) == len(rows) == 180
    # What `prorank-edge rerank` would give, query by query: the same ranking code, the same scores.
    tasks = read_jsonl(source, Checks(trec_ids=True)).tasks
    with Reranker(str(tiny_qwen2_dir), device="cpu", dtype="float32", threads=1) as reranker:
        start = 0
        for task in tasks:
            expected, _ = rank_documents(reranker, task.query, task.candidates)
            got = rows[start:start + len(expected)]
            start += len(expected)
            first_stage = {d.id: d.score for d in task.candidates}
            assert [(r["query_id"], r["doc_id"], r["rank"]) for r in got] == [
                (task.query_id, e["id"], e["rank"]) for e in expected]
            assert [r["score"] for r in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)
            assert all(r["first_stage_score"] == first_stage[r["doc_id"]] for r in got)
            assert all(r["rerank_score"] == r["score"] for r in got)  # a random model has no fusion weight
    assert any(r["first_stage_score"] is None for r in rows) and any(r["first_stage_score"] for r in rows)
    # The TREC run reads back to the same scores, so an evaluation sees what the output says.
    assert read_trec_run(trec) == {t.query_id: {r["doc_id"]: r["score"] for r in rows if r["query_id"] == t.query_id}
                                   for t in tasks}
    assert not (tmp_path / "out" / "ranked.parquet.shards").exists()


def test_trec_run_and_beir_folder_in_fusion_out_and_metrics_on_it(tiny_qwen2_dir, tmp_path):
    pytest.importorskip("pytrec_eval")
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.evaluation.metrics import evaluate_run, write_trec_run
    from prorank_edge.fusion import fuse_scores

    beir = write_tiny_beir(tmp_path / "beir")
    first_stage = {"q3": {"d5": 3.0, "d9": 2.5, "d1": 0.5}, "q1": {"d1": 4.0, "d6": 1.0, "d8": 0.2},
                   "q2": {"d2": 2.0, "d7": 1.5, "d10": 1.0}}
    write_trec_run(tmp_path / "bm25.trec", first_stage, tag="bm25")
    output, trec = tmp_path / "ranked.jsonl", tmp_path / "ranked.trec"
    result = cli(["--run", str(tmp_path / "bm25.trec"), "--data", str(beir), "-o", str(output), "--trec-out", str(trec),
                  "--fusion-weight", "0.5", "--quiet", *model_args(tiny_qwen2_dir)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["fusion_weights"] == [0.5] and summary["pairs"] == 9 and result.stderr == ""
    rows = read_output(output)
    assert [r["query_id"] for r in rows] == ["q3"] * 3 + ["q1"] * 3 + ["q2"] * 3  # the run's query order
    assert {(r["query_id"], r["doc_id"]) for r in rows} == {(q, d) for q, docs in first_stage.items() for d in docs}
    for qid in first_stage:
        got = [r for r in rows if r["query_id"] == qid]
        assert [r["first_stage_score"] for r in got] == [first_stage[qid][r["doc_id"]] for r in got]
        fused = fuse_scores([r["first_stage_score"] for r in got], [r["rerank_score"] for r in got], 0.5)
        # rerank_score is rounded to 6 digits, and min-max over a random model's narrow spread magnifies that
        assert [r["score"] for r in got] == pytest.approx(list(fused), abs=1e-3)
        scores = [r["score"] for r in got]
        assert [r["rank"] for r in got] == [1, 2, 3] and scores == sorted(scores, reverse=True)
    run = read_trec_run(trec)
    metrics = evaluate_run(load_beir(beir).qrels, run)["mean"]
    assert 0.0 < metrics["ndcg@10"] <= 1.0


def _wait_for_shards(folder: Path, count: int, process, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("shard-*.jsonl"))) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.005)


@pytest.mark.slow
def test_killed_and_stopped_job_resumes_to_the_uninterrupted_output(tiny_qwen2_dir, tmp_path):
    source = write_queries(tmp_path / "in.jsonl", 60, 8)
    reference = tmp_path / "reference.jsonl"
    assert cli(["-i", str(source), "-o", str(reference), "--shard-size", "2", "--quiet",
                *model_args(tiny_qwen2_dir)]).exit_code == 0
    output = tmp_path / "ranked.jsonl"
    folder = tmp_path / "ranked.jsonl.shards"
    command = [sys.executable, "-m", "prorank_edge.cli", "batch", "-i", str(source), "-o", str(output),
               "--shard-size", "2", "--quiet", *model_args(tiny_qwen2_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _wait_for_shards(folder, 1, first)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    after_kill = len(list(folder.glob("shard-*.jsonl")))
    assert 0 < after_kill < 30 and not output.exists()

    # A resume must be the same job: other scoring options are refused before anything is scored.
    refused = cli(["-i", str(source), "-o", str(output), "--shard-size", "2", "--resume", "--normalize", "--quiet",
                   *model_args(tiny_qwen2_dir)])
    assert refused.exit_code == 2 and "cannot resume" in refused.stderr and "normalize was False, now True" in \
        refused.stderr
    assert cli(["-i", str(source), "-o", str(output), "--shard-size", "2", "--quiet",
                *model_args(tiny_qwen2_dir)]).exit_code == 2  # without --resume: refused, shards kept

    second = subprocess.Popen(command + ["--resume"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _wait_for_shards(folder, after_kill + 1, second)
    second.send_signal(signal.SIGTERM)
    _, err = second.communicate(timeout=60)
    after_term = len(list(folder.glob("shard-*.jsonl")))
    if second.returncode != 0:  # it may have finished just before the signal
        assert second.returncode == 143 and b"terminated" in err
        assert after_kill < after_term < 30 and not output.exists()
        # SIGTERM unwinds: no staging file is left behind
        assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []

        result = cli(["-i", str(source), "-o", str(output), "--shard-size", "2", "--resume", "--quiet",
                      *model_args(tiny_qwen2_dir)])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["shards"] == {"total": 30, "resumed": after_term, "scored": 30 - after_term}
        assert summary["scored_now"]["pairs"] == 8 * 2 * (30 - after_term)
    assert output.read_bytes() == reference.read_bytes()
    rows = read_output(output)
    assert len(rows) == len(set(pairs_of(rows))) == 480
    assert not folder.exists()


@pytest.mark.slow
def test_two_local_processes_write_the_same_bytes_as_one(tiny_qwen2_dir, queries_file, uninterrupted, tmp_path):
    output = tmp_path / "ranked.jsonl"
    summary = run_job(BatchJob(input=input_spec(str(queries_file)), output=output, spec=spec_for(tiny_qwen2_dir),
                               shard_size=4, workers=2, progress=False))
    assert output.read_bytes() == uninterrupted.read_bytes()
    assert len(summary["per_worker"]) == 2
    assert sum(w["shards"] for w in summary["per_worker"]) == summary["shards"]["total"] == 8
    assert all(w["pairs_per_s"] > 0 and w["load_seconds"] > 0 for w in summary["per_worker"])
