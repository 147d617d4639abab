"""Issue 14's accuracy check for ONNX int4: the built-in model, the first 50 SciFact test queries x BM25 top 20,
per-query Spearman and nDCG@10 of each ONNX artifact against torch fp32 on the same candidates.

    .venv/bin/python benchmarks/results/onnx_int4/accuracy_50q.py ARTIFACT [ARTIFACT ...] > accuracy_50q.json

ARTIFACT: ONNX folders exported from the built-in model (e.g. the bench's cached ones).
"""
import json
import sys

import numpy as np
from scipy.stats import spearmanr

from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import evaluate_reranker
from prorank_edge.models import default_model
from prorank_edge.reranker import Reranker

QUERIES, TOP_K = 50, 20


def run(path, **options):
    with Reranker(str(path), **options) as reranker:
        report = evaluate_reranker(beir, reranker, top_k=TOP_K, max_queries=QUERIES, show_progress=False)
        return report, reranker.describe()


beir = load_beir("../shared/data/beir/scifact", "test")
model_dir = default_model().path
reference, _ = run(model_dir, backend="torch", dtype="float32")
out = {"queries": QUERIES, "top_k": TOP_K, "torch_fp32": reference.to_dict()["metrics"]["reranker"],
       "bm25": reference.to_dict()["metrics"]["bm25"], "artifacts": {}}
for artifact in sys.argv[1:]:
    report, described = run(artifact)
    rhos = []
    for qid, cands in reference.candidates.items():
        mine = {c.doc_id: c.rerank_score for c in report.candidates[qid]}
        if len(cands) > 1:
            rhos.append(spearmanr([c.rerank_score for c in cands], [mine[c.doc_id] for c in cands]).statistic)
    metrics = report.to_dict()["metrics"]["reranker"]
    out["artifacts"][artifact] = {
        "per_query_spearman": float(np.mean(rhos)), "min_query_spearman": float(np.min(rhos)),
        "ndcg@10": metrics["ndcg@10"], "delta_ndcg@10": metrics["ndcg@10"] - out["torch_fp32"]["ndcg@10"],
        "pairs_per_s": report.timing["pairs_per_s"], "backend": described}
print(json.dumps(out, indent=1))
