"""How much a q8_0 score moves with the batch around it, and where: n_seq_max 1 vs 8, prefix cache on/off,
flash attention on/off; f16 as the control."""
import glob, json, numpy as np
from prorank_edge.reranker import Reranker
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
A = '/root/.cache/prorank-edge/bench-artifacts/'
files = {"q8_0": glob.glob(A + '*q8_0-r3.gguf')[0], "f16": glob.glob(A + '*f5da*f16-r3.gguf')[0]}
data = load_beir("../shared/data/beir/scifact", "test")
qids = list(data.queries)[:2]
docs, _ = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], 8)
pairs = [(data.queries[q], data.corpus[d].full_text) for q, ds in zip(qids, docs) for d in ds]
out = {}
for name, path in files.items():
    res = {}
    for n_seq in (1, 8):
        for pc in (True, False):
            for fa in (None, False):
                r = Reranker(path, backend="gguf", device="cpu", threads=2, n_seq_max=n_seq, prefix_cache=pc, flash_attn=fa)
                res[f"seq{n_seq}_pc{int(pc)}_fa{fa}"] = r.predict(pairs).tolist(); r.close()
    ref = np.array(res["seq1_pc0_faFalse"])
    out[name] = {k: float(np.abs(np.array(v) - ref).max()) for k, v in res.items()}
    print(name, json.dumps(out[name]), "range", float(np.ptp(ref)), flush=True)
json.dump(out, open("benchmarks/results/gguf/q8_0_batch_dependence.json", "w"), indent=1)
