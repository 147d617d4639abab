"""Run from the repository root: .venv/bin/python benchmarks/results/training/default_gguf_vs_torch.py

The built-in default merged with numpy into f16 GGUF (no torch) against the torch fp32 merge, 60 SciFact pairs."""
import json, os, subprocess, sys, tempfile
import numpy as np
from scipy.stats import spearmanr
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.reranker import Reranker

data = load_beir('../shared/data/beir/scifact', 'test')
qids = list(data.queries)[:6]
hits, _ = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], 10)
pairs = [(data.queries[q], data.corpus[d].full_text) for q, docs in zip(qids, hits) for d in docs]
with Reranker(backend="torch", device="cpu", dtype="float32") as ref:
    expected = ref.predict(pairs)
script = r'''
import json, sys
sys.modules["torch"] = sys.modules["transformers"] = None
from prorank_edge.reranker import Reranker
pairs = json.load(open(sys.argv[1]))
with Reranker() as r:
    print(json.dumps([float(s) for s in r.predict([tuple(p) for p in pairs])]))
'''
path = tempfile.mktemp(suffix='.json'); json.dump(pairs, open(path, 'w'))
out = subprocess.run([sys.executable, '-c', script, path], capture_output=True, text=True, check=True)
got = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
print(json.dumps({"pairs": len(pairs), "max_abs_diff": float(np.abs(got - expected).max()),
                  "spearman": float(spearmanr(got, expected).correlation),
                  "score_range": [float(expected.min()), float(expected.max())]}))
