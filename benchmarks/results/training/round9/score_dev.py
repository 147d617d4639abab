"""A model's scores on the 100 held-out SciFact dev queries (training queries held out with seed 0), BM25 top 20,
torch bf16, saved as [doc id, BM25 score, model score] per candidate for document_prior.py.

    .venv/bin/python benchmarks/results/training/round9/score_dev.py MODEL OUT.json
"""
import json
import sys
import time

from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import evaluate_reranker
from prorank_edge.reranker import Reranker
from prorank_edge.train.adapter_cmd import held_out_dev

model, out = sys.argv[1], sys.argv[2]
data = held_out_dev(load_beir("../shared/data/beir/scifact", "train"), 100, 0)
with Reranker(model, backend="torch", dtype="bfloat16", threads=2) as reranker:
    started = time.time()
    report = evaluate_reranker(data, reranker, top_k=20, show_progress=False)
with open(out, "w") as file:
    json.dump({"name": "scifact_dev", "model": model, "dtype": "bfloat16", "seconds": time.time() - started,
               "metrics": report.metrics, "qrels": report.qrels,
               "candidates": {q: [[c.doc_id, c.bm25_score, c.rerank_score] for c in cands]
                              for q, cands in report.candidates.items()}}, file)
print(report.metrics)
