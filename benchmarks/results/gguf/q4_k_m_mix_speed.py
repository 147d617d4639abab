"""Docs/s of GGUF files on the same prompts, alternated per query (the order turning each round), best of rounds.

    .venv/bin/python benchmarks/results/gguf/q4_k_m_mix_speed.py QUERIES TOP_K ROUNDS FILE.gguf ...

A FILE named torch-fp32 or torch-bf16 is the torch backend on the built-in model at that dtype (the issue's
reference speeds), prefix cache on like the GGUF backend.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from prorank_edge.backends.gguf_backend import GgufBackend  # noqa: E402
from prorank_edge.backends.torch_backend import TorchBackend  # noqa: E402
from prorank_edge.benchmarks.harness import build_workload  # noqa: E402
from prorank_edge.devices import cpu_flags  # noqa: E402
from prorank_edge.evaluation.beir import load_beir  # noqa: E402
from prorank_edge.models import default_model  # noqa: E402

queries, top_k, rounds, files = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
data = load_beir(str(Path(__file__).resolve().parents[4] / "shared/data/beir/scifact"), "test")
work, _ = build_workload(data, default_model().path, top_k, queries, [], 0)
prompts = [q["token_ids"] for q in work["queries"]]


def load(name: str):
    if name.startswith("torch-"):
        return TorchBackend(default_model().path, device="cpu", dtype=name.split("-", 1)[1])
    return GgufBackend(name, device="cpu")


backends = {Path(f).name: load(f) for f in files}
for b in backends.values():
    b.score_batch(prompts[0][:4])  # warm-up
times = {n: np.zeros((rounds, len(prompts))) for n in backends}
for r in range(rounds):
    order = list(backends) if r % 2 == 0 else list(backends)[::-1]
    for qi, ids in enumerate(prompts):
        for n in order:
            start = time.perf_counter()
            backends[n].score_batch(ids)
            times[n][r, qi] = time.perf_counter() - start
docs = sum(len(p) for p in prompts)
first = list(backends)[0]
print(json.dumps({"cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}),
                  "queries": queries, "top_k": top_k, "rounds": rounds,
                  "docs_per_s_best": {n: round(docs / float(t.sum(1).min()), 3) for n, t in times.items()},
                  f"paired_median_vs_{first}": {n: round(float(np.median(times[first] / t)), 3)
                                                for n, t in times.items()}}, indent=1))
