"""Probe: does scoring a long document as several windows (score = max over windows, "MaxP") beat its first
window alone? Dev = SciFact train queries held out by seed 0 (never test unless --split test)."""
import argparse, json, sys, time
import numpy as np
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.evaluation.metrics import evaluate_run
from prorank_edge.reranker import Reranker
from prorank_edge.train.adapter_cmd import held_out_dev

p = argparse.ArgumentParser()
p.add_argument("--split", default="dev"); p.add_argument("--queries", type=int, default=100)
p.add_argument("--top-k", type=int, default=10); p.add_argument("--stride", type=int, default=0)
p.add_argument("--max-windows", type=int, default=4); p.add_argument("--out", required=True)
a = p.parse_args()
if a.split == "dev":
    data = held_out_dev(load_beir("../shared/data/beir/scifact", "train"), 100, 0)
else:
    data = load_beir("../shared/data/beir/scifact", "test")
qids = list(data.queries)[:a.queries]
docs, bm = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], a.top_k)
r = Reranker("default")
P = r.prompts
rows = []  # (qid, doc, window index, ids)
for q, ds in zip(qids, docs):
    qi = P.query_ids(data.queries[q])
    budget = P.content_budget - len(qi) - len(P.separator_ids)
    stride = a.stride or budget
    for d in ds:
        ids = P._encode_documents([data.corpus[d].full_text])[0]
        starts = list(range(0, max(1, len(ids) - budget + stride), stride))[: a.max_windows] if len(ids) > budget else [0]
        for w, s in enumerate(starts):
            rows.append((q, d, w, P._assemble(qi, ids[s:s + budget])))
t = time.time()
scores = r.score_token_ids([x[3] for x in rows], groups=[x[0] for x in rows], show_progress_bar=True)
el = time.time() - t
out = {"split": a.split, "queries": len(qids), "top_k": a.top_k, "stride": a.stride, "max_windows": a.max_windows,
       "prompts": len(rows), "seconds": el, "describe": r.describe()}
per = {}
for (q, d, w, _), s in zip(rows, scores):
    per.setdefault(q, {}).setdefault(d, {})[w] = float(s)
qrels = {q: data.qrels[q] for q in qids}
runs = {"bm25": {q: {d: float(s) for d, s in zip(ds, ss)} for q, ds, ss in zip(qids, docs, bm.tolist())},
        "first": {q: {d: v[0] for d, v in per[q].items()} for q in qids},
        "max": {q: {d: max(v.values()) for d, v in per[q].items()} for q in qids},
        "mean": {q: {d: float(np.mean(list(v.values()))) for d, v in per[q].items()} for q in qids},
        "first_plus_max": {q: {d: 0.5 * v[0] + 0.5 * max(v.values()) for d, v in per[q].items()} for q in qids}}
out["ndcg@10"] = {k: evaluate_run(qrels, run, (10,))["mean"]["ndcg@10"] for k, run in runs.items()}
out["windows_per_doc"] = float(np.mean([len(v) for q in per for v in per[q].values()]))
out["per"] = per
json.dump(out, open(a.out, "w"), indent=1)
print(json.dumps({k: v for k, v in out.items() if k != "per"}, indent=1))
