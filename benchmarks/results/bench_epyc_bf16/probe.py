"""Probe: docs/s and per-query Spearman of several backends on the same SciFact test pairs, in one process each
after the other (prefix cache on, 2 threads), against the first spec listed. Used on an AMD EPYC with AVX-512
BF16 (2026-12-06) for the GGUF bf16 level and for OpenVINO on the int8 / int4 (MatMulNBits) artifacts with its
CPU plugin's dynamic quantization (int8 activations per group of DQ weights, on VNNI).

    NQ=10 TOPK=20 .venv/bin/python benchmarks/results/bench_epyc_bf16/probe.py OUT.json NAME=MODEL[:DTYPE[:DQ]] ...

NAME's prefix picks the backend: torch*, ort* (onnxruntime), gguf*, anything else openvino. MODEL: "default",
an ONNX artifact folder or a .gguf file. DTYPE: torch / openvino precision (float32, bfloat16). DQ: OpenVINO's
DYNAMIC_QUANTIZATION_GROUP_SIZE (0 turns it off; its default on this CPU is 32).
"""
import json
import os
import sys
import time

import numpy as np
from scipy.stats import spearmanr

import prorank_edge.backends.openvino_backend as openvino_backend
from prorank_edge.benchmarks.harness import CPU_FLAGS
from prorank_edge.devices import cpu_flags
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import evaluate_reranker
from prorank_edge.reranker import Reranker

out, specs = sys.argv[1], sys.argv[2:]
n_queries = int(os.environ.get("NQ", "10"))
beir = load_beir(os.environ.get("DATA", "../shared/data/beir/scifact"), "test")
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
top_k = int(os.environ.get("TOPK", "20"))
results = {"cpu": cpu, "flags": sorted(set(CPU_FLAGS) & cpu_flags()), "queries": n_queries, "top_k": top_k,
           "runs": {}}
compile_openvino, reference = openvino_backend._compile, None
for spec in specs:
    name, _, rest = spec.partition("=")
    path, dtype, group = (rest.split(":") + [None, None])[:3]
    backend = ("torch" if name.startswith("torch") else "onnx" if name.startswith("ort")
               else "gguf" if name.startswith("gguf") else "openvino")

    def compile_with_group(core, file, config, inputs, outputs, group=group):
        return compile_openvino(core, file, {**config, **({"DYNAMIC_QUANTIZATION_GROUP_SIZE": group} if group else {})},
                                inputs, outputs)

    openvino_backend._compile = compile_with_group
    options = {"dtype": dtype} if backend in ("torch", "openvino") and dtype else {}
    started = time.perf_counter()
    with Reranker(path, backend=backend, threads=2, **options) as reranker:
        load_s = time.perf_counter() - started
        evaluate_reranker(beir, reranker, top_k=top_k, max_queries=1, show_progress=False)  # warm-up
        runs = [evaluate_reranker(beir, reranker, top_k=top_k, max_queries=n_queries, show_progress=False)
                for _ in range(2)]
    scores = {q: [c.rerank_score for c in cands] for q, cands in runs[-1].candidates.items()}
    reference = reference or scores
    results["runs"][name] = {
        "spec": rest, "pairs_per_s": max(r.timing["pairs_per_s"] for r in runs), "load_s": load_s,
        "spearman_vs_first": float(np.mean([spearmanr(reference[q], scores[q]).statistic for q in reference])),
        "mean_abs_diff_vs_first": float(np.mean([np.abs(np.subtract(reference[q], scores[q])).mean()
                                                 for q in reference])),
        "ndcg@10": runs[-1].metrics.get("reranker", {}).get("ndcg@10"),
    }
    print(name, json.dumps(results["runs"][name]), flush=True)
    with open(out, "w") as file:
        json.dump(results, file, indent=1)
