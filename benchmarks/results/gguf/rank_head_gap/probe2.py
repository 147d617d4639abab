import sys, json
sys.path[:0] = ["/work/main"]
import numpy as np
from prorank_edge.backends.gguf_backend import GgufBackend
path = "/work/probe/rankhead/rank_f16head.gguf"
pooled = np.load("/work/probe/rankhead/f16head_pooled.npy")
own_batched = np.load("/work/probe/rankhead/f16head_own.npy")
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
data = load_beir("/work/shared/data/beir/scifact", "test")
qids = list(data.queries)[:4]
hits, _ = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], 10)
pairs = [(data.queries[q], data.corpus[d].full_text) for q, h in zip(qids, hits) for d in h]
for fa in (None, False):
    for n_seq in (1, 8):
        b = GgufBackend(path, device="cpu", flash_attn=fa, n_seq_max=n_seq)
        ids = b.prompts.build_pairs(pairs)
        own = b.score_batch(ids)
        b.close()
        print(json.dumps({"flash_attn": fa, "n_seq_max": n_seq, "vs_pooled": float(np.abs(own - pooled).max()),
                          "vs_default_batched": float(np.abs(own - own_batched).max())}), flush=True)
