import glob, json, numpy as np
from prorank_edge.reranker import Reranker
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.export.parity import spearman
A = '/root/.cache/prorank-edge/bench-artifacts/'
files = {"q8_0": glob.glob(A + '*q8_0-r3.gguf')[0], "f16": glob.glob(A + '*f5da*f16-r3.gguf')[0]}
data = load_beir("../shared/data/beir/scifact", "test")
qids = list(data.queries)[:10]
docs, _ = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], 20)
pairs = [(data.queries[q], data.corpus[d].full_text) for q, ds in zip(qids, docs) for d in ds]
with Reranker("default", backend="torch", dtype="float32") as r:
    ref = r.predict(pairs)
out = {}
for name, path in files.items():
    for fa in (None, False):
        with Reranker(path, backend="gguf", device="cpu", threads=2, flash_attn=fa) as r:
            s = r.predict(pairs)
        rho = np.mean([spearman(ref[i:i+20], s[i:i+20]) for i in range(0, len(pairs), 20)])
        out[f"{name}_fa{fa}"] = {"max_abs": float(np.abs(s - ref).max()), "mean_abs": float(np.abs(s - ref).mean()), "per_query_spearman": float(rho)}
        print(name, fa, out[f"{name}_fa{fa}"], flush=True)
json.dump(out, open("benchmarks/results/gguf/q8_0_flash_attention_vs_torch.json", "w"), indent=1)
