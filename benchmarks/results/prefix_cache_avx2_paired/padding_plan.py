"""Tokens each plan really runs (padding included) and forward calls, with the prefix cache on and off: the
speed-up a padded CPU backend can reach, against the ideal 1 / computed share."""
import json, sys
import numpy as np
from prorank_edge.reranker import Reranker
from prorank_edge.contract import plan_batches
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.backends.base import CPU_CALL_COST_TOKENS as C

data = load_beir("../shared/data/beir/scifact", "test")
qids = list(data.queries)[:6]
docs, _ = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], 100)
r = Reranker(backend="torch", device="cpu", dtype="float32", batch_size=16)
be = r.backend
out = {}
for k in (10, 50, 100):
    tot = {True: [0, 0, 0], False: [0, 0, 0]}  # run tokens (padded), calls, real tokens computed
    for q, d in zip(qids, docs):
        ids = be.prompts.build(data.queries[q], [data.corpus[x].full_text for x in d[:k]])
        for share in (True, False):
            plan = plan_batches(ids, None, 16, be.max_batch_tokens, share, be.padding_call_cost)
            if share:
                P = plan[0][0]
                tot[share][0] += P; tot[share][1] += 1; tot[share][2] += P  # the prefix pass
            for prefix, batch in plan:
                lens = [len(ids[i]) - prefix for i in batch]
                tot[share][0] += max(lens) * len(lens); tot[share][1] += 1; tot[share][2] += sum(lens)
    on, off = tot[True], tot[False]
    ideal = off[2] / on[2]
    padded = off[0] / on[0]
    with_calls = (off[0] + C * off[1]) / (on[0] + C * on[1])
    out[f"top {k}"] = {"ideal": round(ideal, 3), "padded_tokens_ratio": round(padded, 3),
                       "padded_plus_calls_ratio": round(with_calls, 3), "calls_on": on[1], "calls_off": off[1],
                       "padding_share_on": round(1 - on[2] / on[0], 3), "padding_share_off": round(1 - off[2] / off[0], 3)}
print(json.dumps(out, indent=1))
