"""A/B of the torch prefix path: suffixes as one packed row (torch_packed.py, the new default on the CPU) against
the padded batch it replaced, each against the cache off, per query back to back (the order turning each round).

    git apply benchmarks/results/prefix_cache_avx2_packed/packed_suffixes.patch   # the packed path, not adopted
    .venv/bin/python benchmarks/results/prefix_cache_avx2_packed/ab.py [ROUNDS] > ab.json

"padded" is the shipped path exactly (with the patch applied, the model's attention is registered under another
name but is transformers' SDPA for every call that is not a packed row).

Workloads as benchmarks/prefix_cache.py builds them (SciFact test queries; the 128-token prompts and the ~150-token
chunks in 512-token prompts with its long instruction, 20 passages a query). The built-in model, torch fp32.
"""
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from prorank_edge.benchmarks.prefix_cache import LONG_INSTRUCTION, build_workloads
from prorank_edge.devices import cpu_flags
from prorank_edge.reranker import Reranker

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
DATA = Path(__file__).resolve().parents[4] / "shared/data/beir/scifact"
PLAN = [("SciFact top 10", 6), ("SciFact top 50", 4), ("128-token prompts, long instruction", 6),
        ("~150-token chunks in 512-token prompts, long instruction", 6)]

workloads = {w["name"]: w for w in build_workloads(DATA, 6, [10, 50], 20)}
report = {"cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}),
          "machine": platform.processor() or platform.machine(), "rounds": ROUNDS, "rows": []}
for name, count in PLAN:
    workload = workloads[name]
    queries = workload["queries"][:int(os.environ.get("AB_QUERIES", count))]  # AB_QUERIES=1: a smoke run
    instruction = workload["instruction"]
    rerankers = {}
    for variant in ("off", "padded", "packed"):
        r = Reranker(backend="torch", device="cpu", dtype="float32", prefix_cache=variant != "off",
                     max_length=workload["max_length"])
        if variant == "padded":
            r.backend.packs_suffixes = False  # the path before: right-padded suffixes, batches cut for padding
        r.rank(queries[0]["text"], queries[0]["documents"][:4], instruction=instruction)  # warm-up
        rerankers[variant] = r
    scores = {v: [] for v in rerankers}
    times = {v: np.zeros((ROUNDS, len(queries))) for v in rerankers}
    for rnd in range(ROUNDS):
        order = list(rerankers) if rnd % 2 == 0 else list(rerankers)[::-1]
        for qi, q in enumerate(queries):
            for v in order:
                start = time.perf_counter()
                result = rerankers[v].rank(q["text"], q["documents"], instruction=instruction)
                times[v][rnd, qi] = time.perf_counter() - start
                if rnd == 0:
                    scores[v].append([x["score"] for x in sorted(result, key=lambda x: x["corpus_id"])])
    counts = rerankers["packed"].backend.token_counts
    share = counts["computed_tokens"] / counts["prompt_tokens"]
    ideal = 1 / share
    docs = sum(len(q["documents"]) for q in queries)
    row = {"workload": name, "queries": len(queries), "documents": docs, "computed_share": round(share, 4),
           "ideal": round(ideal, 3)}
    for v in ("padded", "packed"):
        paired = np.median(times["off"] / times[v])
        row[v] = {"paired_median": round(float(paired), 3),
                  "efficiency": round(float((paired - 1) / (ideal - 1)), 3),
                  "best_of": round(float(times["off"].sum(1).min() / times[v].sum(1).min()), 3),
                  "docs_per_s_best": round(docs / float(times[v].sum(1).min()), 2),
                  "max_score_difference_vs_off": round(float(max(np.abs(np.array(a) - np.array(b)).max()
                                                                 for a, b in zip(scores[v], scores["off"]))), 6)}
    row["packed_over_padded_paired"] = round(float(np.median(times["padded"] / times["packed"])), 3)
    row["docs_per_s_off_best"] = round(docs / float(times["off"].sum(1).min()), 2)
    report["rows"].append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
    for r in rerankers.values():
        r.close()
print(json.dumps(report, indent=1))
