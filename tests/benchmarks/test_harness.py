"""The bench harness (benchmarks/harness.py): format parsing, latency summaries, and artifact cache keys."""

from __future__ import annotations

import pytest
from conftest import requires_torch

pytestmark = requires_torch


def test_parse_formats_rejects_unknown_and_keeps_order():
    from prorank_edge.benchmarks.harness import parse_formats
    from prorank_edge.errors import ProrankError

    assert [v.name for v in parse_formats("onnx-int8, torch-fp32,onnx-int8")] == ["onnx-int8", "torch-fp32"]
    for bad in ("onnx-q8_0", "gguf-int4", "torch-fp16", "tflite-int8", ""):
        with pytest.raises(ProrankError):
            parse_formats(bad)


def test_latency_summary_counts_every_repetition():
    from prorank_edge.benchmarks.harness import latency_summary

    summary = latency_summary([[1.0, 3.0], [2.0, 2.0]], [10, 10])
    assert summary["docs_per_s"] == pytest.approx(40 / 8)
    assert summary["docs_per_s_repetitions"] == pytest.approx([5.0, 5.0])
    assert summary["latency_p50_ms"] == pytest.approx(2000.0)
    assert summary["timed_queries"] == 4


def test_cached_artifacts_follow_the_weights_not_the_folder_name(tmp_path, monkeypatch):
    import os

    from prorank_edge.benchmarks.harness import EXPORT_REVISIONS, Variant, artifact_path

    variant = Variant("onnx-int8", "onnx", "int8")
    first, second = tmp_path / "a" / "stage2", tmp_path / "b" / "stage2"
    for folder in (first, second):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights")
    assert artifact_path(tmp_path, first, variant) != artifact_path(tmp_path, second, variant)
    before = artifact_path(tmp_path, first, variant)
    os.utime(first / "model.safetensors", ns=(1, 1))  # retrained in place
    assert artifact_path(tmp_path, first, variant) != before
    before_onnx = artifact_path(tmp_path, first, variant)
    assert artifact_path(tmp_path, first, Variant("torch-fp32", "torch", "fp32")) == first
    # An exporter that writes something new gets new cache entries.
    gguf = Variant("gguf-q8_0", "gguf", "q8_0")
    old = artifact_path(tmp_path, first, gguf)
    monkeypatch.setitem(EXPORT_REVISIONS, "gguf", EXPORT_REVISIONS["gguf"] + 1)
    assert artifact_path(tmp_path, first, gguf) != old and artifact_path(tmp_path, first, variant) == before_onnx
