"""Does a reranker rank a document by how often it was relevant in training? On saved per-candidate scores of the
100 held-out SciFact dev queries (BM25 top 20; round5/fusion_rules/scifact_dev.json, or a file of the same
layout), the non-relevant candidates split into those judged positive for some training query (the 709 that
are not dev queries) and the rest: their mean percentile rank among the query's non-relevant candidates, by the
model and by BM25, and how often each is scored above one of the query's positives. Dev only, never test.

    .venv/bin/python benchmarks/results/training/round9/document_prior.py [SCORES.json] > OUT.json
"""
import json
import sys

import numpy as np

from prorank_edge.evaluation.beir import load_beir

path = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/training/round5/fusion_rules/scifact_dev.json"
saved = json.load(open(path))
train = load_beir("../shared/data/beir/scifact", "train")
dev = set(saved["qrels"])
train_positives = {d for q, rel in train.qrels.items() if q not in dev for d, g in rel.items() if g > 0}
kinds = ("positive_of_a_training_query", "other")
found = {k: {"model_percentile": [], "bm25_percentile": [], "above_a_positive": []} for k in kinds}
for q, candidates in saved["candidates"].items():
    relevant = {d for d, g in saved["qrels"][q].items() if g > 0}
    rest = [c for c in candidates if c[0] not in relevant]
    positives = [c[2] for c in candidates if c[0] in relevant]
    if len(rest) < 2:
        continue
    model = np.array([c[2] for c in rest]).argsort().argsort() / (len(rest) - 1)
    bm25 = np.array([c[1] for c in rest]).argsort().argsort() / (len(rest) - 1)
    for i, (doc, _, score) in enumerate(rest):
        f = found[kinds[0] if doc in train_positives else kinds[1]]
        f["model_percentile"].append(model[i])
        f["bm25_percentile"].append(bm25[i])
        if positives:
            f["above_a_positive"].append(score > min(positives))
print(json.dumps({"scores": path, "queries": len(saved["candidates"]), **{
    k: {"candidates": len(v["model_percentile"]), **{m: round(float(np.mean(x)), 4) for m, x in v.items()}}
    for k, v in found.items()}}, indent=1))
