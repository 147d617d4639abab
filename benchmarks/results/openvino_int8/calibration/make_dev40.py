"""dev40.npz: held-out SciFact dev queries 10..49 (disjoint from dev.npz's first 10) x BM25 top 20; OV f32 reference."""
import sys, numpy as np, openvino as ov
sys.path.insert(0, "/work/nncf_proto")
from tokenizers import Tokenizer
from prorank_edge.contract import PromptBuilder, ScoringContract
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.train.adapter_cmd import held_out_dev
from common import score, compile_model
ART = "/work/nncf_proto/onnx-fp32"
prompts = PromptBuilder(Tokenizer.from_file(f"{ART}/tokenizer.json"), ScoringContract.load(ART))
dev = held_out_dev(load_beir("/work/shared/data/beir/scifact", "train"), 100, 0)
qids = list(dev.queries)[10:50]
docs, _ = BM25Retriever(dev.corpus).retrieve([dev.queries[q] for q in qids], 20)
rows, group = [], []
for i, (q, ids) in enumerate(zip(qids, docs)):
    rows += prompts.build(dev.queries[q], [dev.corpus[d].full_text for d in ids]); group += [i] * len(ids)
np.savez("/work/ovx/dev40/dev40.npz", flat=np.concatenate([np.asarray(r, np.int64) for r in rows]),
         offsets=np.cumsum([0] + [len(r) for r in rows]).astype(np.int64), group=np.asarray(group))
np.save("/work/ovx/dev40/dev_qids.npy", np.asarray(list(dev.queries)))
s = score(compile_model(f"{ART}/model.onnx", "f32"), rows)
np.save("/work/ovx/dev40/ref_f32.npy", s)
print(len(rows), "prompts; ref done")
