"""export_openvino with per-input alphas from a json {input name: alpha}; calibration pairs from pairs.pkl."""
import sys, json, pickle, onnx, numpy as np
import prorank_edge.export.onnx_int8 as oi
import prorank_edge.export.openvino_export as oe
from prorank_edge.export.smoothing import channel_factor
choice_file, out = sys.argv[1], sys.argv[2]
choice = json.load(open(choice_file))["choice"]
model = onnx.load("/work/nncf_proto/onnx-fp32/model.onnx")
key_alpha = {oi.weight_key(w): choice[n.input[0]] for _, n, w in oi._constant_matmuls(model) if n.input[0] in choice}
def patched(stats, alpha=None, outlier_ratio=None, **kw):
    f = {}
    for k, st in stats.items():
        a = key_alpha[k]; x = np.maximum(st["x_max"], 1e-5)
        f[k] = {"scale": channel_factor(x, st["w_max"], a) if a > 0 else np.ones(len(x), np.float32), "outliers": np.zeros(0, np.int64)}
    return f
oi.channel_factors = patched
if len(sys.argv) > 3 and sys.argv[3] == "nocheck": oe._check_graphs = lambda *a: None
info = oe.export_openvino("/work/nncf_proto/onnx-fp32", out, overwrite=True, calibration_pairs=pickle.load(open("/work/ov2/pairs.pkl", "rb")))
print(json.dumps(info["openvino"]["graphs"]))
