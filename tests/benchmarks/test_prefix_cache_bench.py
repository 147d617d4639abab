"""benchmarks/prefix_cache.py: on/off timings per workload, with the paired (per query, back to back) speed-up beside
the best."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO, requires_torch

pytestmark = requires_torch


def load_script():
    spec = importlib.util.spec_from_file_location("prefix_cache_bench", REPO / "benchmarks" / "prefix_cache.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measure_variant_reports_paired_speedup(tiny_qwen2_dir):
    script = load_script()
    documents = ["Influenza is caused by viruses.", "Paris is the capital of France.", "Vaccines prevent the flu."]
    workload = {"name": "tiny", "max_length": 96, "instruction": "Find passages about the illness",
                "queries": [{"text": "what causes influenza", "documents": documents},
                            {"text": "capital of france", "documents": documents}]}
    job = {"name": "torch-fp32", "backend": "torch", "quant": "float32", "model": str(tiny_qwen2_dir),
           "threads": 1, "batch_size": 4, "repeats": 3, "workloads": [workload]}
    (row,) = script.measure_variant(job)["rows"]
    assert len(row["times_on_s"]) == len(row["times_off_s"]) == 3
    # one pair per query and repetition, timed back to back; a repetition's time is its queries' sum
    ratios = sorted(row["paired_ratios"])
    assert len(ratios) == 2 * 3 and all(r > 0 for r in ratios)
    assert row["speedup_paired_median"] == pytest.approx((ratios[2] + ratios[3]) / 2)
    ideal, paired = row["ideal_speedup"], row["speedup_paired_median"]
    assert ideal > 1 and row["efficiency_paired_median"] == pytest.approx((paired - 1) / (ideal - 1))
    assert row["docs_per_s_on"] == pytest.approx(6 / min(row["times_on_s"]))
    assert row["queries_same_ranking"] == 2 and row["max_abs_score_diff"] < 1e-3

    report = {"label": "t", "date": "2026-12-05", "queries": 2, "repeats": 3, "threads": 1, "batch_size": 4,
              "model_name": "tiny", "load_average_before": 0.0, "errors": {},
              "machine": {"cpu_model": "cpu", "cpu_flags": {"avx2": True}},
              "rows": [row, {k: v for k, v in row.items() if "paired" not in k}]}  # an older row has no pair column
    table = [line for line in script.markdown(report).splitlines() if line.startswith("| torch-fp32")]
    assert f"{row['speedup_paired_median']:.2f}x (" in table[0] and table[1].count("| – |") == 1
