"""nDCG@10 on the 40 held-out dev queries x BM25 top 20 (openvino bf16, prefix cache) per artifact, and OV f32 fp32."""
import sys, json, numpy as np
sys.path.insert(0, "/work/nncf_proto")
from common import load_rows, compare
from prorank_edge.backends.openvino_backend import OpenVinoBackend
from prorank_edge.contract import shared_prefix_length
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.evaluation.metrics import evaluate_run
from prorank_edge.train.adapter_cmd import held_out_dev
dev = held_out_dev(load_beir("/work/shared/data/beir/scifact", "train"), 100, 0)
qids = list(dev.queries)[10:50]
docs, _ = BM25Retriever(dev.corpus).retrieve([dev.queries[q] for q in qids], 20)
rows, z = load_rows("/work/ovx/dev40/dev40.npz"); ref = np.load("/work/ovx/dev40/ref_f32.npy")
qrels = {q: dev.qrels[q] for q in qids}
def ndcg(s):
    run = {q: {d: float(s[i * 20 + j]) for j, d in enumerate(ids)} for i, (q, ids) in enumerate(zip(qids, docs))}
    return evaluate_run(qrels, run)
print("fp32 (OV f32)", ndcg(ref))
for d in sys.argv[1:]:
    b = OpenVinoBackend(d, dtype="bfloat16", threads=2); s = np.zeros(len(rows), np.float32)
    for g in range(40):
        idx = np.where(z["group"] == g)[0]; rr = [list(rows[i]) for i in idx]; cut = shared_prefix_length(rr)
        for k in range(0, len(idx), 16):
            s[idx[k:k+16]] = b.score_with_prefix(rr[0][:cut], [r[cut:] for r in rr[k:k+16]])
    print(d, ndcg(s), json.dumps({k: round(v, 4) for k, v in compare(ref, s, z["group"]).items()}), flush=True)
