"""GPTQ (Frantar et al. 2022) rounding of the smoothed int8 weights on NNCF's grid (symmetric, per output channel,
scale max|w|/127), from the calibration prompts' activations; then export with those weights. Usage: gptq.py TAG ALPHA"""
import sys, json, pickle, time, numpy as np, onnx, onnxruntime as ort
import prorank_edge.export.onnx_int8 as oi
import prorank_edge.export.openvino_export as oe
from prorank_edge.export.smoothing import channel_factor
from prorank_edge.export.onnx_export import onnx_feeds
from prorank_edge.contract import PromptBuilder, ScoringContract, left_pad
from tokenizers import Tokenizer
tag, alpha = sys.argv[1], float(sys.argv[2]); SHARE = 0.02
ART = "/work/nncf_proto/onnx-fp32"
pb = PromptBuilder(Tokenizer.from_file(f"{ART}/tokenizer.json"), ScoringContract.load(ART))
pairs = pickle.load(open("/work/ov2/pairs.pkl", "rb"))
by_q = {}
for q, d in pairs: by_q.setdefault(q, []).append(d)
rows = [r for q, ds in by_q.items() for r in pb.build(q, ds)]
model = onnx.load(f"{ART}/model.onnx")
keys, _ = oe.int8_matmuls(model)
mm = [(n, w) for _, n, w in oi._constant_matmuls(model) if oi.weight_key(w) in keys]
stats = oi.calibrate(f"{ART}/model.onnx", onnx_feeds(rows))
inputs = sorted({n.input[0] for n, _ in mm})
for name in inputs: model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
opt = ort.SessionOptions(); opt.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
sess = ort.InferenceSession(model.SerializeToString(), opt, providers=["CPUExecutionProvider"])
H = {n: 0 for n in inputs}
for r in rows:
    a, m = left_pad([r])
    for n, v in zip(inputs, sess.run(inputs, {"input_ids": a, "attention_mask": m})):
        x = v.reshape(-1, v.shape[-1]).astype(np.float64); H[n] = H[n] + x.T @ x
t0 = time.time(); out = {}; report = []
for node, w in mm:
    k = oi.weight_key(w); st = stats[k]
    s = channel_factor(np.maximum(st["x_max"], 1e-5), st["w_max"], alpha) if alpha > 0 else np.ones(w.shape[0], np.float32)
    W = (w * s[:, None]).astype(np.float64)            # [K, N]: rows are input channels
    Hs = H[node.input[0]] / np.outer(s, s)              # covariance of the smoothed input x / s
    cap = int(SHARE * len(s)); outl = np.argsort(-np.maximum(st["x_max"], 1e-5))[:cap]
    W[outl] = 0; Hs = Hs.copy(); Hs[outl] = 0; Hs[:, outl] = 0
    damp = 0.01 * np.mean(np.diag(Hs)); Hs = Hs + damp * np.eye(len(Hs))
    scale = np.maximum(np.abs(W).max(0), 1e-12) / 127   # per output channel, fixed before rounding
    Hinv = np.linalg.cholesky(np.linalg.inv(Hs)).T      # upper Cholesky of H^-1
    Q = np.zeros_like(W); Wk = W.copy()
    for i in range(W.shape[0]):
        q = np.clip(np.round(Wk[i] / scale), -127, 127) * scale
        Q[i] = q; err = (Wk[i] - q) / Hinv[i, i]
        Wk[i + 1:] -= np.outer(Hinv[i, i + 1:], err)
    # keep each column's largest step at 127 so the quantizer recomputes the same scale
    steps = np.round(Q / scale); top = np.abs(steps).max(0) < 127
    if top.any():
        j = np.abs(W).argmax(0); cols = np.where(top)[0]; Q[j[cols], cols] = np.sign(W[j[cols], cols]) * 127 * scale[cols]
    rtn = np.clip(np.round(W / scale), -127, 127) * scale
    e_g = np.trace((Q - W).T @ Hs @ (Q - W)); e_r = np.trace((rtn - W).T @ Hs @ (rtn - W))
    report.append((node.name, float(e_g / e_r), int(top.sum())))
    out[k] = Q.astype(np.float32)
print("gptq seconds", round(time.time() - t0), "mean output-error ratio gptq/rtn", np.mean([r[1] for r in report]), "fixed cols", sum(r[2] for r in report), flush=True)
def smooth(model, factors, keys):
    from onnx import helper, numpy_helper
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    done, before, after = {}, {}, {}
    for index, node, weight in oi._constant_matmuls(model):
        key = oi.weight_key(weight)
        if key not in keys: continue
        scale, out = factors[key]["scale"], factors[key]["outliers"]
        x = node.input[0]
        if x not in done:
            name = f"smooth/{len(done)}"
            inv = (1.0 / scale).astype(np.float32); inv[out] = 0
            graph.initializer.append(numpy_helper.from_array(inv, name + "/inverse"))
            nodes = [helper.make_node("Mul", [x, name + "/inverse"], [name + "/x"], name=name + "/Mul")]
            if len(out):
                graph.initializer.append(numpy_helper.from_array(out.astype(np.int64), name + "/outlier_channels"))
                nodes.append(helper.make_node("Gather", [x, name + "/outlier_channels"], [name + "/outliers"], axis=-1, name=name + "/Gather"))
            before.setdefault(index, []).extend(nodes)
            done[x] = name
        name = done[x]
        node.input[0] = name + "/x"
        ws = (weight * scale[:, None]).astype(np.float32); ws[out] = 0
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(ws, node.input[1]))
        if len(out):
            y = node.output[0]; node.output[0] = y + "/int8"
            wname = node.name + "/outlier_weight"
            graph.initializer.append(numpy_helper.from_array(weight[out].astype(np.float32), wname))
            after[index] = [helper.make_node("MatMul", [name + "/outliers", wname], [y + "/outlier"], name=node.name + "/outlier_MatMul"),
                            helper.make_node("Add", [y + "/int8", y + "/outlier"], [y], name=node.name + "/outlier_Add")]
    nodes = []
    for index, node in enumerate(graph.node):
        nodes += before.get(index, []) + [node] + after.get(index, [])
    del graph.node[:]; graph.node.extend(nodes)
    return model

def smooth2(model, factors, keys_):
    from onnx import numpy_helper
    by_name = {n.input[1]: oi.weight_key(w) for _, n, w in oi._constant_matmuls(model)}
    m = smooth(model, factors, keys_)
    for init in m.graph.initializer:
        k = by_name.get(init.name)
        if k in out: init.CopyFrom(numpy_helper.from_array(out[k], init.name))
    return m
oe.smooth = smooth2
oe._check_graphs = lambda *a: None
_qg = oe._quantize_graph
def qg(model, items, keep_float):
    extra = [op.get_friendly_name() for op in model.get_ops() if op.get_friendly_name().endswith("/outlier_MatMul")]
    return _qg(model, items, list(keep_float) + extra)
oe._quantize_graph = qg
orig_cf = oi.channel_factors
oi.channel_factors = lambda stats_, alpha=None, outlier_ratio=None, **kw: orig_cf(stats_, alpha=float(sys.argv[2]), outlier_ratio=0, outlier_max_share=SHARE)
info = oe.export_openvino(ART, f"/work/ov2/{tag}", overwrite=True, calibration_pairs=pairs)
print(tag, json.dumps(info["openvino"]["graphs"]), flush=True)
