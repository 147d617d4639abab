"""benchmarks/artifact_accuracy.py: each artifact's per-query agreement with torch fp32 on the same candidates."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import REPO, requires_torch, write_tiny_beir

pytestmark = requires_torch


def test_an_artifact_is_compared_per_query_with_the_reference(tiny_qwen2_dir, wide_qwen2_dir, tmp_path, monkeypatch):
    # A checkpoint as an artifact runs at the backend's auto dtype: fp32 here, whatever the CPU, to compare exactly.
    monkeypatch.setattr("prorank_edge.backends.torch_backend.cpu_has_native_bf16", lambda: False)
    spec = importlib.util.spec_from_file_location("artifact_accuracy", REPO / "benchmarks" / "artifact_accuracy.py")
    accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy)
    out = tmp_path / "acc.json"
    # The reference itself must agree exactly; another model (same tokenizer, other weights) must not.
    assert accuracy.main([str(tiny_qwen2_dir), str(wide_qwen2_dir), "--model", str(tiny_qwen2_dir), "--data",
                          str(write_tiny_beir(tmp_path / "tiny")), "--queries", "2", "--top-k", "3",
                          "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    same, other = report["artifacts"][str(tiny_qwen2_dir)], report["artifacts"][str(wide_qwen2_dir)]
    assert report["queries"] == 2 and report["machine"]["cpu_model"] and 0 <= report["torch_fp32"]["ndcg@10"] <= 1
    assert same["per_query_spearman"] == same["min_query_spearman"] == 1.0
    assert same["max_abs_score_diff"] < 1e-4 and same["delta_ndcg@10"] == 0.0
    assert same["delta_ndcg@10_paired"]["ties"] == 2 and same["delta_ndcg@10_paired"]["ci"] == [0.0, 0.0]
    assert other["delta_ndcg@10_paired"]["diff"] == pytest.approx(other["delta_ndcg@10"], abs=1e-12)
    assert other["max_abs_score_diff"] > 1e-2 and other["min_query_spearman"] < 1.0
    assert same["backend"]["backend"] == "torch" and same["pairs_per_s"] > 0
