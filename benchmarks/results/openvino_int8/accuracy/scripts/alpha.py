"""Per-input SmoothQuant alpha, chosen by the simulated int8 output error of the MatMuls that read the input."""
import sys, json, random, pickle, time, numpy as np, onnx, onnxruntime as ort
from prorank_edge.export.onnx_int8 import _constant_matmuls, weight_key
from prorank_edge.export.openvino_export import int8_matmuls
from prorank_edge.export.smoothing import channel_factor
from prorank_edge.contract import PromptBuilder, ScoringContract, left_pad
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from tokenizers import Tokenizer
ART = "/work/nncf_proto/onnx-fp32"
ALPHAS = [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]
prompts = PromptBuilder(Tokenizer.from_file(f"{ART}/tokenizer.json"), ScoringContract.load(ART))
dev_q = set(np.load("/work/ovx/dev40/dev_qids.npy").tolist())
train = load_beir("/work/shared/data/beir/scifact", "train")
rng = random.Random(0); tq = sorted(q for q in train.queries if q not in dev_q); rng.shuffle(tq); tq = tq[:16]
top, _ = BM25Retriever(train.corpus).retrieve([train.queries[q] for q in tq], 3)
ids = list(train.corpus)
pairs = [(train.queries[q], train.corpus[d].full_text) for q, dl in zip(tq, top) for d in [*dl, rng.choice(ids)]]
pickle.dump(pairs, open("/work/ov2/pairs.pkl", "wb"))
by_q = {}
for q, d in pairs: by_q.setdefault(q, []).append(d)
rows = [r for q, ds in by_q.items() for r in prompts.build(q, ds)]
model = onnx.load(f"{ART}/model.onnx")
keys, _ = int8_matmuls(model)
mm = [(n, w) for _, n, w in _constant_matmuls(model) if weight_key(w) in keys]
inputs = sorted({n.input[0] for n, _ in mm})
for name in inputs: model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
opt = ort.SessionOptions(); opt.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
sess = ort.InferenceSession(model.SerializeToString(), opt, providers=["CPUExecutionProvider"])
X = {n: [] for n in inputs}
for r in rows:
    a, m = left_pad([r])
    for n, v in zip(inputs, sess.run(inputs, {"input_ids": a, "attention_mask": m})): X[n].append(v.reshape(-1, v.shape[-1]))
X = {n: np.concatenate(v) for n, v in X.items()}
print("tokens", len(X[inputs[0]]), flush=True)
def qa(x):
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0); step = (hi - lo) / 255
    return np.clip(np.round((x - lo) / step), 0, 255) * step + lo
def qw(w):
    sc = np.maximum(np.abs(w).max(0), 1e-12) / 127
    return np.round(w / sc) * sc
choice, table = {}, {}
t0 = time.time()
for name in inputs:
    ws = [w for n, w in mm if n.input[0] == name]
    x = X[name]; x_max = np.maximum(np.abs(x).max(0), 1e-5); w_max = np.max([np.abs(w).max(1) for w in ws], 0)
    W = np.concatenate(ws, 1); ref = x @ W; den = float((ref ** 2).sum())
    errs = {}
    for a in ALPHAS:
        s = channel_factor(x_max, w_max, a) if a > 0 else np.ones_like(x_max)
        errs[a] = float(((qa(x / s) @ qw(W * s[:, None]) - ref) ** 2).sum()) / den
    best = min(errs, key=errs.get)
    choice[name] = best; table[name] = errs
    print(name, "best", best, " ".join(f"{a}:{e:.2e}" for a, e in errs.items()), flush=True)
print("seconds", time.time() - t0)
json.dump({"choice": choice, "errors": table}, open("/work/ov2/alpha_choice.json", "w"), indent=1)
