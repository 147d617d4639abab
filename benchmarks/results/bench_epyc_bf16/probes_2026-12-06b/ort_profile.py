"""onnxruntime profile of an ONNX artifact's prefix and suffix sessions (2 threads, ORT_ENABLE_ALL) on SciFact test
queries 1 (warm-up) + 4 x BM25 top 20; kernel time per op type. Profiles and the optimized graphs go to /tmp.

    .venv/bin/python benchmarks/results/bench_epyc_bf16/probes_2026-12-06b/ort_profile.py ARTIFACT TAG
"""
import collections
import json
import sys

import onnxruntime as ort

import prorank_edge.backends.onnx_backend as onnx_backend
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import evaluate_reranker
from prorank_edge.reranker import Reranker

artifact, tag = sys.argv[1], sys.argv[2]
load_session = onnx_backend._load_session


def profiled(path, options, providers, inputs, outputs):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 2
    options.enable_profiling = True
    options.profile_file_prefix = f"/tmp/prof_{tag}_{path.stem}"
    if path.stem != "model":
        options.optimized_model_filepath = f"/tmp/opt_{tag}_{path.stem}.onnx"
    return load_session(path, options, providers, inputs, outputs)


onnx_backend._load_session = profiled
beir = load_beir("../shared/data/beir/scifact", "test")
with Reranker(artifact, backend="onnx", threads=2) as reranker:
    evaluate_reranker(beir, reranker, top_k=20, max_queries=1, show_progress=False)
    report = evaluate_reranker(beir, reranker, top_k=20, max_queries=4, show_progress=False)
    print("pairs/s", report.timing["pairs_per_s"])
    files = [s.end_profiling() for s in (reranker.backend.prefix_session, reranker.backend.suffix_session)]
for file in files:
    total = collections.Counter()
    for event in json.load(open(file)):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total[event["args"]["op_name"]] += event["dur"]
    seconds = sum(total.values())
    print(file, seconds / 1e6, "s")
    for op, micros in total.most_common(25):
        print(f"  {op:32s} {100 * micros / seconds:5.1f}%")
