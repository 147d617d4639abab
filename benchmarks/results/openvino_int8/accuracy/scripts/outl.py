"""OpenVINO int8 with static outlier-channel decomposition: outlier input channels of each int8 MatMul computed in
float by a small side MatMul, the rest smoothed (alpha) and int8. Usage: outl.py TAG ALPHA RATIO SHARE"""
import sys, json, pickle, numpy as np
import prorank_edge.export.onnx_int8 as oi
import prorank_edge.export.openvino_export as oe
tag, alpha, ratio, share = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
orig_cf = oi.channel_factors
counts = {}
def cf(stats, alpha_=None, outlier_ratio=None, **kw):
    f = orig_cf(stats, alpha=alpha, outlier_ratio=ratio, outlier_max_share=share)
    counts.update({k: len(v["outliers"]) for k, v in f.items()})
    return f
oi.channel_factors = cf
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
oe.smooth = smooth
_qg = oe._quantize_graph
def qg(model, items, keep_float):
    extra = [op.get_friendly_name() for op in model.get_ops() if op.get_friendly_name().endswith("/outlier_MatMul")]
    return _qg(model, items, list(keep_float) + extra)
oe._quantize_graph = qg
if "nocheck" in sys.argv: oe._check_graphs = lambda *a: None
out = f"/work/ov2/{tag}"
info = oe.export_openvino("/work/nncf_proto/onnx-fp32", out, overwrite=True, calibration_pairs=pickle.load(open("/work/ov2/pairs.pkl", "rb")))
import collections
print(tag, "outliers per key:", sorted(collections.Counter(counts.values()).items()), json.dumps(info["openvino"]["graphs"]), flush=True)
