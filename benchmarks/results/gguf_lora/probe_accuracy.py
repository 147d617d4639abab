import json, sys, time
from pathlib import Path
sys.path[:0] = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).parent)]
import numpy as np
from scipy.stats import spearmanr
from probe_base_plus_lora import LoraBackend, OUT
from prorank_edge.backends.gguf_backend import GgufBackend
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import evaluate_reranker
from prorank_edge.models import default_model
from prorank_edge.reranker import Reranker

Q, K = int(sys.argv[1]), 20
beir = load_beir("/work/shared/data/beir/scifact" if False else "../shared/data/beir/scifact", "test")
ref_path = OUT / f"ref_{Q}.json"
if ref_path.exists():
    ref = json.loads(ref_path.read_text())
else:
    with Reranker(str(default_model().path), backend="torch", dtype="float32") as r:
        rep = evaluate_reranker(beir, r, top_k=K, max_queries=Q, show_progress=False)
    ref = {"ndcg": rep.to_dict()["metrics"]["reranker"]["ndcg@10"],
           "scores": {q: {c.doc_id: c.rerank_score for c in cs} for q, cs in rep.candidates.items()}}
    ref_path.write_text(json.dumps(ref))
print("torch fp32 ndcg", round(ref["ndcg"], 4), flush=True)
for spec in sys.argv[2:]:
    base, _, lora = spec.partition("+")
    backend = LoraBackend(OUT / base, OUT / lora if lora else None)
    r = Reranker.from_backend(backend)
    t = time.perf_counter()
    rep = evaluate_reranker(beir, r, top_k=K, max_queries=Q, show_progress=False)
    dt = time.perf_counter() - t
    rhos, drift = [], 0.0
    for q, cs in rep.candidates.items():
        mine = {c.doc_id: c.rerank_score for c in cs}
        ids = list(ref["scores"][q])
        a = [ref["scores"][q][d] for d in ids]; b = [mine[d] for d in ids]
        drift = max(drift, float(np.max(np.abs(np.array(a) - np.array(b)))))
        if len(ids) > 1:
            rhos.append(spearmanr(a, b).statistic)
    nd = rep.to_dict()["metrics"]["reranker"]["ndcg@10"]
    print(json.dumps({"variant": spec, "per_query_spearman": round(float(np.mean(rhos)), 4),
                      "min": round(float(np.min(rhos)), 4), "max_drift": round(drift, 3),
                      "ndcg@10": round(nd, 4), "delta": round(nd - ref["ndcg"], 4),
                      "pairs_per_s": round(Q * K / dt, 2)}), flush=True)
    backend.close()
