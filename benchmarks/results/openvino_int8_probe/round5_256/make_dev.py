"""dev.npz: the first 10 of the 100 held-out SciFact dev queries (training queries held out with seed 0, never
trained on, never test) x BM25 top 20, for choosing what to keep float without looking at test. Main venv."""
import numpy as np
from tokenizers import Tokenizer

from prorank_edge.contract import PromptBuilder, ScoringContract
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.train.adapter_cmd import held_out_dev

ART = "/work/nncf_proto/onnx-fp32"
prompts = PromptBuilder(Tokenizer.from_file(f"{ART}/tokenizer.json"), ScoringContract.load(ART))
dev = held_out_dev(load_beir("../shared/data/beir/scifact", "train"), 100, 0)
qids = list(dev.queries)[:10]
docs, _ = BM25Retriever(dev.corpus).retrieve([dev.queries[q] for q in qids], 20)
rows, group = [], []
for i, (q, ids) in enumerate(zip(qids, docs)):
    rows += prompts.build(dev.queries[q], [dev.corpus[d].full_text for d in ids])
    group += [i] * len(ids)
flat = np.concatenate([np.asarray(r, np.int64) for r in rows])
offsets = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
np.savez("/work/nncf_proto/dev.npz", flat=flat, offsets=offsets, group=np.asarray(group))
print(len(rows), "dev prompts from", qids)
