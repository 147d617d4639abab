"""Run with /work/main/.venv: builds ProRank token ids for SciFact pairs with the project's own PromptBuilder.
eval.npz: first 10 SciFact TEST queries x BM25 top 20 (as `prorank-edge eval` picks them).
calib.npz: 64 prompts from SciFact TRAIN queries (BM25 top-3 + 1 random doc each, 16 queries)."""
import random, json
import numpy as np
from tokenizers import Tokenizer
from prorank_edge.contract import PromptBuilder, ScoringContract
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever

ART = "/work/nncf_proto/onnx-fp32"
DATA = "/work/main/../shared/data/beir/scifact"
pb = PromptBuilder(Tokenizer.from_file(f"{ART}/tokenizer.json"), ScoringContract.load(ART))
test, train = load_beir(DATA, "test"), load_beir(DATA, "train")
bm25 = BM25Retriever(test.corpus)

def pack(name, rows, meta):
    flat = np.concatenate([np.asarray(r, np.int64) for r in rows])
    offs = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    np.savez(name, flat=flat, offsets=offs, **{k: np.asarray(v) for k, v in meta.items()})
    print(name, len(rows), "prompts, tokens min/mean/max", min(map(len, rows)), np.mean([len(r) for r in rows]),
          max(map(len, rows)))

qids = list(test.queries)[:10]
docs, _ = bm25.retrieve([test.queries[q] for q in qids], 20)
rows, gq, gd, lab = [], [], [], []
for qi, (q, dl) in enumerate(zip(qids, docs)):
    rows += pb.build(test.queries[q], [test.corpus[d].full_text for d in dl])
    gq += [qi] * len(dl); gd += dl; lab += [test.qrels[q].get(d, 0) for d in dl]
pack("/work/nncf_proto/eval.npz", rows, {"group": gq, "doc_id": gd, "label": lab, "qid": [qids[i] for i in gq]})

rng = random.Random(0)
tq = list(train.queries)
rng.shuffle(tq)
tq = tq[:16]
assert not set(tq) & set(test.queries)
tdocs, _ = bm25.retrieve([train.queries[q] for q in tq], 3)
all_ids = list(train.corpus)
rows = []
for q, dl in zip(tq, tdocs):
    dl = list(dl) + [rng.choice(all_ids)]
    rows += pb.build(train.queries[q], [train.corpus[d].full_text for d in dl])
pack("/work/nncf_proto/calib.npz", rows, {"qid": [q for q in tq for _ in range(4)]})
