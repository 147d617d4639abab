"""`prorank-edge batch --engine ray` on one local Ray instance of 2 CPUs (shared by the module): the same rows as
the local engine whatever the numbers of actors and blocks, bad lines reported and skipped, a local job killed
half-way finished by Ray, and an actor that cannot load its model reported as one line."""

import json
import logging
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import requires_torch

from prorank_edge.batch.inputs import input_spec
from prorank_edge.batch.job import BatchJob, run_job
from prorank_edge.batch.outputs import make_shards, read_output
from prorank_edge.batch.scoring import ScoringSpec
from prorank_edge.cli import main

pytestmark = [requires_torch, pytest.mark.slow]

SCORE_ATOL = 1e-5


def write_queries(path, queries: int, candidates: int, bad: bool = False):
    lines = []
    for q in range(queries):
        cands = [{"id": f"q{q}d{k}", "text": " ".join(["word", str(q), str(k)] * (1 + (q * 5 + k) % 13)),
                  **({"score": float(k % 4)} if q % 2 else {})} for k in range(candidates)]
        lines.append(json.dumps({"query_id": f"q{q}", "query": f"query number {q}", "candidates": cands}))
    if bad:
        lines.insert(1, '{"query_id": "cut", "query": "truncated", "candid')
        lines.append(json.dumps({"query_id": "q0", "query": "repeats q0", "candidates": []}))
    path.write_text("\n".join(lines) + "\n")
    return path


def model_args(model_dir) -> list[str]:
    return ["--model", str(model_dir), "--device", "cpu", "--dtype", "float32", "--threads", "1"]


def assert_same_rows(got, expected):
    assert [(r["query_id"], r["doc_id"], r["rank"], r["first_stage_score"]) for r in got] == [
        (r["query_id"], r["doc_id"], r["rank"], r["first_stage_score"]) for r in expected]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=SCORE_ATOL)
    assert [r["rerank_score"] for r in got] == pytest.approx([r["rerank_score"] for r in expected], abs=SCORE_ATOL)


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_queries(tmp_path_factory.mktemp("ray_in") / "queries.jsonl", 14, 5)


@pytest.fixture(scope="module")
def local_output(tiny_qwen2_dir, source, tmp_path_factory):
    output = tmp_path_factory.mktemp("ray_ref") / "local.jsonl"
    run_job(BatchJob(input=input_spec(str(source)), output=output, shard_size=3, progress=False,
                     spec=ScoringSpec(model=str(tiny_qwen2_dir), device="cpu", dtype="float32", threads=1)))
    return output


def test_ray_two_actors_match_local_and_skip_bad_lines(ray_instance, tiny_qwen2_dir, local_output, tmp_path):
    with_bad = write_queries(tmp_path / "bad.jsonl", 14, 5, bad=True)
    output = tmp_path / "ray.parquet"
    result = CliRunner().invoke(main, ["batch", "-i", str(with_bad), "-o", str(output), "--engine", "ray",
                                       "--workers", "2", "--shard-size", "3", "--quiet", *model_args(tiny_qwen2_dir)])
    assert result.exit_code == 2, result.output
    summary = json.loads(result.stdout)
    assert [(s["line"], s["query_id"]) for s in summary["skipped"]] == [(2, "cut"), (16, "q0")]
    assert "error: skipped 2 bad input entries" in result.stderr
    assert summary["engine"] == "ray" and summary["shards"] == {"total": 5, "resumed": 0, "scored": 5}
    assert sum(w["pairs"] for w in summary["per_worker"]) == summary["pairs"] == 70
    rows = read_output(output)
    assert_same_rows(rows, read_output(local_output))
    assert len({(r["query_id"], r["doc_id"]) for r in rows}) == 70


def test_the_same_shards_from_one_actor_and_blocks_of_several_shards(ray_instance, tiny_qwen2_dir, source,
                                                                      local_output):
    """The CLI test above runs 2 actors on one block per shard; here 1 actor gets 2 blocks of 3 and 2 shards."""
    from prorank_edge.batch.inputs import read_jsonl
    from prorank_edge.batch.ray_engine import run_ray

    shards = make_shards(read_jsonl(source).tasks, 3)
    results = {}

    def collect(result):
        assert result.index not in results  # scored once
        results[result.index] = result

    spec = ScoringSpec(model=str(tiny_qwen2_dir), device="cpu", dtype="float32", threads=1)
    run_ray(spec, shards, 1, collect, blocks=2)
    assert sorted(results) == [0, 1, 2, 3, 4]
    assert_same_rows([row for k in sorted(results) for row in results[k].rows], read_output(local_output))
    assert len({r.worker for r in results.values()}) == 1


def test_a_killed_local_job_is_finished_by_ray(ray_instance, tiny_qwen2_dir, tmp_path):
    source = write_queries(tmp_path / "in.jsonl", 40, 6)
    output = tmp_path / "ranked.jsonl"
    folder = tmp_path / "ranked.jsonl.shards"
    common = ["-i", str(source), "-o", str(output), "--shard-size", "2", "--quiet", *model_args(tiny_qwen2_dir)]
    job = subprocess.Popen([sys.executable, "-m", "prorank_edge.cli", "batch", *common], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(folder.glob("shard-*.jsonl")):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.005)
    job.send_signal(signal.SIGKILL)
    job.communicate()
    done = len(list(folder.glob("shard-*.jsonl")))
    assert 0 < done < 20

    result = CliRunner().invoke(main, ["batch", *common, "--resume", "--engine", "ray", "--workers", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["shards"] == {"total": 20, "resumed": done, "scored": 20 - done}
    reference = tmp_path / "reference.jsonl"
    assert CliRunner().invoke(main, ["batch", *common[:2], "-o", str(reference), *common[4:]]).exit_code == 0
    rows = read_output(output)
    assert_same_rows(rows, read_output(reference))
    assert len({(r["query_id"], r["doc_id"]) for r in rows}) == len(rows) == 240


def test_an_actor_that_cannot_load_the_model_is_one_error_line(ray_instance, source, tmp_path):
    missing = tmp_path / "no-such-model"
    result = CliRunner().invoke(main, ["batch", "-i", str(source), "-o", str(tmp_path / "out.jsonl"), "--engine",
                                       "ray", "--model", str(missing), "--quiet"])
    assert result.exit_code == 2
    assert result.stderr == f"error: {missing}: no such file or folder\n"
    assert not (tmp_path / "out.jsonl").exists()
