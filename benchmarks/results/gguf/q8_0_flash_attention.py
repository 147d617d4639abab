"""Issue 15: how much a q8_0 score moves with the batch around it, and where (n_seq_max 1 vs 8, prefix cache
on/off, flash attention on/off; f16 as the control), then which side is closer to torch fp32.

    .venv/bin/python benchmarks/results/gguf/q8_0_flash_attention.py
writes q8_0_batch_dependence.json (2 SciFact test queries x BM25 top 8, max |diff| against n_seq_max 1 without
prefix cache or flash attention) and q8_0_flash_attention_vs_torch.json (10 queries x top 20 against torch fp32).
"""
import glob
import json

import numpy as np

from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.export.parity import spearman
from prorank_edge.reranker import Reranker

A = '/root/.cache/prorank-edge/bench-artifacts/'  # the bench's cached exports of the built-in model
FILES = {"q8_0": glob.glob(A + '*q8_0-r3.gguf')[0], "f16": glob.glob(A + '*f5da*f16-r3.gguf')[0]}
OUT = "benchmarks/results/gguf/"
data = load_beir("../shared/data/beir/scifact", "test")


def test_pairs(queries, top_k):
    qids = list(data.queries)[:queries]
    docs, _ = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], top_k)
    return [(data.queries[q], data.corpus[d].full_text) for q, ds in zip(qids, docs) for d in ds]


pairs = test_pairs(2, 8)
moves = {}
for name, path in FILES.items():
    res = {}
    for n_seq in (1, 8):
        for pc in (True, False):
            for fa in (None, False):
                with Reranker(path, backend="gguf", device="cpu", threads=2, n_seq_max=n_seq, prefix_cache=pc,
                              flash_attn=fa) as r:
                    res[f"seq{n_seq}_pc{int(pc)}_fa{fa}"] = r.predict(pairs)
    ref = res["seq1_pc0_faFalse"]
    moves[name] = {k: float(np.abs(v - ref).max()) for k, v in res.items()}
json.dump(moves, open(OUT + "q8_0_batch_dependence.json", "w"), indent=1)

pairs = test_pairs(10, 20)
with Reranker("default", backend="torch", dtype="float32") as r:
    ref = r.predict(pairs)
against = {}
for name, path in FILES.items():
    for fa in (None, False):
        with Reranker(path, backend="gguf", device="cpu", threads=2, flash_attn=fa) as r:
            s = r.predict(pairs)
        rho = np.mean([spearman(ref[i:i + 20], s[i:i + 20]) for i in range(0, len(pairs), 20)])
        against[f"{name}_fa{fa}"] = {"max_abs": float(np.abs(s - ref).max()), "mean_abs": float(np.abs(s - ref).mean()),
                                     "per_query_spearman": float(rho)}
json.dump(against, open(OUT + "q8_0_flash_attention_vs_torch.json", "w"), indent=1)
