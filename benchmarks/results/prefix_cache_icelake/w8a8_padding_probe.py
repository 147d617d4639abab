"""Probe: does padding change w8a8 ONNX scores? One query's candidates of different lengths, scored one prompt per
call (no padding), batched whole prompts (left padding), and with the prefix cache (right-padded suffixes)."""
import sys, json
sys.path[:0] = ["/work/main"]
import numpy as np
from pathlib import Path
from prorank_edge.reranker import Reranker
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever

art = Path.home() / ".cache/prorank-edge/bench-artifacts"
quant = sys.argv[1] if len(sys.argv) > 1 else "w8a8"
model = next(art.glob(f"*-{quant}-r3-onnx"))
data = load_beir("/work/shared/data/beir/scifact", "test")
qids = list(data.queries)[:2]
hits, _ = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], 10)
out = {}
for q, h in zip(qids, hits):
    # documents of many lengths: cut each abstract at a different word count
    docs = [" ".join(data.corpus[d].full_text.split()[: 20 + 15 * i]) for i, d in enumerate(h)]
    res = {}
    for name, kwargs in (("one_by_one", dict(prefix_cache=False, batch_size=1)),
                         ("batched", dict(prefix_cache=False, batch_size=16)),
                         ("prefix_cache", dict(prefix_cache=True, batch_size=16))):
        r = Reranker(str(model), backend="onnx", device="cpu", **kwargs)
        res[name] = np.array(r.predict([(data.queries[q], d) for d in docs]))
        r.close()
    out[q] = {k: float(np.abs(v - res["one_by_one"]).max()) for k, v in res.items()}
print(json.dumps({"model": model.name, "max_abs_vs_one_by_one": out}))
