# As run for smollm2_scifact_1000_pairs.json: python beir_parity.py MODEL_DIR OUT.json ARTIFACT... (scratch, not a maintained tool)
# Reference torch fp32 vs artifacts on SciFact test, first 50 queries x BM25 top 20: nDCG@10, Spearman.
import sys, json, time, pickle, numpy as np
from pathlib import Path
sys.path.insert(0, "/work/main")
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.reranker import Reranker
from prorank_edge.evaluation.metrics import *  # noqa
import prorank_edge.evaluation.metrics as M
from export.parity import spearman, parity_summary
model_dir = Path(sys.argv[1]); out = Path(sys.argv[2]); variants = sys.argv[3:]
data = load_beir("/work/shared/data/beir/scifact", "test")
qids = list(data.queries)[:50]
docs, _ = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], 20)
pairs = [(data.queries[q], data.corpus[d].full_text) for q, ds in zip(qids, docs) for d in ds]
groups = [list(range(i*20, i*20+20)) for i in range(50)]
res = json.loads(out.read_text()) if out.exists() else {}
def ndcg(scores):
    run = {q: {d: float(scores[i*20+j]) for j, d in enumerate(ds)} for i, (q, ds) in enumerate(zip(qids, docs))}
    return M.evaluate_run({q: data.qrels[q] for q in qids if q in data.qrels}, run)["mean"]["ndcg@10"]
ref_path = out.with_suffix(".ref.npy")
if ref_path.exists(): ref = np.load(ref_path)
else:
    t = time.time()
    with Reranker(str(model_dir), backend="torch", dtype="float32", device="cpu") as r: ref = np.asarray(r.predict(pairs))
    np.save(ref_path, ref); print("ref", time.time()-t, flush=True)
res["torch_fp32"] = {"ndcg@10": ndcg(ref)}
for v in variants:
    t = time.time()
    with Reranker(v, device="cpu") as r: s = np.asarray(r.predict(pairs))
    summ = parity_summary(ref, s, groups)
    summ["per_query_spearman"] = float(np.nanmean([spearman(ref[g], s[g]) for g in groups]))
    summ["ndcg@10"] = ndcg(s); summ["seconds"] = time.time()-t
    res[v] = summ; print(v, summ, flush=True)
    out.write_text(json.dumps(res, indent=1))
out.write_text(json.dumps(res, indent=1))
