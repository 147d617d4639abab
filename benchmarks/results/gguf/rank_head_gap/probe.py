"""Probe: is the f16 LM head the gap between rank pooling and the own logit score of an f16 rank-head file?"""
import sys, json, time
sys.path[:0] = ["/work/main"]
import numpy as np
from pathlib import Path
from prorank_edge.export import gguf_export as ge
from prorank_edge.backends.gguf_backend import GgufBackend
from prorank_edge.backends.llama_runtime import load_gguf_model, rank_pooling_scores, captured_llama_log
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever

model_dir = Path.home() / ".cache/prorank-edge/models/SmolLM2-135M-Instruct-prorank-f5da8765827a"
out = Path("/work/probe/rankhead")
data = load_beir("/work/shared/data/beir/scifact", "test")
qids = list(data.queries)[:4]
hits, _ = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], 10)
pairs = [(data.queries[q], data.corpus[d].full_text) for q, h in zip(qids, hits) for d in h]
mode = sys.argv[1]
path = out / f"rank_{mode}.gguf"
if not path.exists():
    if mode == "f32head":
        # the LM head (output.weight) written in f32, everything else as the export writes it
        import gguf
        orig_add = gguf.GGUFWriter.add_tensor
        def add_tensor(self, name, tensor, *a, **k):
            if name == "output.weight":
                tensor = np.ascontiguousarray(tensor, dtype=np.float32)
            return orig_add(self, name, tensor, *a, **k)
        gguf.GGUFWriter.add_tensor = add_tensor
    t = time.time()
    ge.export_gguf(model_dir, path, quant="f16", rank_head=True, overwrite=True)
    print("export", time.time() - t, flush=True)
backend = GgufBackend(path, device="cpu")
ids = backend.prompts.build_pairs(pairs)
own = backend.score_batch(ids)
backend.close()
import llama_cpp
model = load_gguf_model(llama_cpp, path)
pooled = np.array(rank_pooling_scores(llama_cpp, model, ids))
llama_cpp.llama_model_free(model)
print(json.dumps({"mode": mode, "pairs": len(ids), "max_abs": float(np.abs(own - pooled).max()),
                  "range": [float(own.min()), float(own.max())]}))
np.save(out / f"{mode}_own.npy", own); np.save(out / f"{mode}_pooled.npy", pooled)
