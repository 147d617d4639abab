"""Per-candidate scores of the built-in default (torch fp32) on BM25 top 20: SciFact dev (held-out train
queries), Cranfield (all 225), SciFact test (300), saved for offline fusion comparisons."""
import json, sys, time
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import evaluate_reranker
from prorank_edge.reranker import Reranker
from prorank_edge.train.adapter_cmd import held_out_dev
sets = {"scifact_dev": lambda: held_out_dev(load_beir("../shared/data/beir/scifact", "train"), 100, 0),
        "cranfield": lambda: load_beir("data/cranfield", "test"),  # made by benchmarks/cranfield_to_beir.py
        "scifact_test": lambda: load_beir("../shared/data/beir/scifact", "test")}
with Reranker("default", backend="torch", dtype="float32") as r:
    for name in sys.argv[1:]:
        data = sets[name]()
        t = time.time()
        rep = evaluate_reranker(data, r, top_k=20, show_progress=False)
        out = {"name": name, "seconds": time.time() - t, "metrics": rep.metrics, "qrels": rep.qrels,
               "candidates": {q: [[c.doc_id, c.bm25_score, c.rerank_score] for c in cs] for q, cs in rep.candidates.items()}}
        json.dump(out, open(f"benchmarks/results/training/round5/fusion_rules/{name}.json", "w"))
        print(name, rep.metrics, time.time() - t, flush=True)
