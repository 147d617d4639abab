"""The GGUF backend's llama.cpp context knobs on one file, each in its own load: KV cache type (type_k / type_v as
ggml type ids, 30 = bf16), n_ubatch, n_seq_max; docs/s (best of 2 after a warm-up) and Spearman against the first.

    NQ=5 .venv/bin/python benchmarks/results/bench_epyc_bf16/probes_2026-12-06b/gguf_context_knobs.py \\
        OUT.json FILE.gguf base= kvbf16=type_k:30,type_v:30 ub1024=n_ubatch:1024
"""
import json
import os
import sys

import llama_cpp
import numpy as np
from scipy.stats import spearmanr

from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import evaluate_reranker
from prorank_edge.reranker import Reranker

out, model, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
queries, top_k = int(os.environ.get("NQ", "5")), int(os.environ.get("TOPK", "20"))
beir = load_beir("../shared/data/beir/scifact", "test")
init_from_model = llama_cpp.llama_init_from_model
knobs: dict = {}


def init_with_knobs(handle, params):
    for key in ("type_k", "type_v", "n_ubatch"):
        if key in knobs:
            setattr(params, key, knobs[key])
    return init_from_model(handle, params)


llama_cpp.llama_init_from_model = init_with_knobs
results, reference = {"model": model, "queries": queries, "top_k": top_k, "runs": {}}, None
for spec in specs:
    name, _, rest = spec.partition("=")
    knobs = {k: int(v) for k, v in (kv.split(":") for kv in rest.split(",") if kv)}
    options = {k: knobs[k] for k in ("n_seq_max", "n_batch") if k in knobs}
    with Reranker(model, backend="gguf", threads=2, **options) as reranker:
        evaluate_reranker(beir, reranker, top_k=top_k, max_queries=1, show_progress=False)
        runs = [evaluate_reranker(beir, reranker, top_k=top_k, max_queries=queries, show_progress=False)
                for _ in range(2)]
    scores = {q: [c.rerank_score for c in cands] for q, cands in runs[-1].candidates.items()}
    reference = reference or scores
    results["runs"][name] = {
        "knobs": knobs, "docs_per_s": max(r.timing["pairs_per_s"] for r in runs),
        "spearman_vs_first": float(np.mean([spearmanr(reference[q], scores[q]).statistic for q in reference])),
        "max_abs_diff_vs_first": float(max(np.abs(np.subtract(reference[q], scores[q])).max() for q in reference))}
    print(name, results["runs"][name], flush=True)
    with open(out, "w") as file:
        json.dump(results, file, indent=1)
