"""benchmarks/length_sweep.py: one row per prompt length, with dev nDCG@10 and a rerank latency."""

from __future__ import annotations

import importlib.util
import json
import shutil

from conftest import REPO, requires_torch, write_tiny_beir

pytestmark = requires_torch


def test_length_sweep_writes_one_row_per_length(tiny_qwen2_dir, tmp_path):
    beir = write_tiny_beir(tmp_path / "tiny")
    shutil.copyfile(beir / "qrels" / "test.tsv", beir / "qrels" / "train.tsv")
    spec = importlib.util.spec_from_file_location("length_sweep", REPO / "benchmarks" / "length_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    out = tmp_path / "sweep.json"
    assert sweep.main(["--model", str(tiny_qwen2_dir), "--data", str(beir), "--lengths", "96,128",
                       "--dev-queries", "2", "--eval-queries", "2", "--top-k", "3", "--latency-queries", "1",
                       "--latency-docs", "3", "--repeats", "2", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["max_length"] for row in report["rows"]] == [96, 128]
    assert report["dev_queries"] == 2 and report["machine"]["cpu_model"]
    for row in report["rows"]:
        assert 0.0 <= row["dev_ndcg@10"] <= 1.0 and 0.0 <= row["bm25_dev_ndcg@10"] <= 1.0
        assert len(row["rerank_s_each_query"]) == 1 and row["rerank_s_median"] > 0
