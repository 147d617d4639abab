import json, sys, numpy as np, openvino as ov
from common import *
rows, z = load_rows(f"{HERE}/eval.npz")
model = ov.Core().read_model(f"{HERE}/onnx-fp32/model.onnx")
ov.save_model(model, f"{HERE}/ir-fp32/model.xml", compress_to_fp16=False)   # the fp32 IR for the timing script
res = {}
for prec in ("f32", "bf16"):
    cm = compile_model(model, prec)
    s = score(cm, rows)
    np.save(f"{HERE}/scores_ov_{prec}.npy", s)
    c = runtime_precisions(cm)
    print(prec, "runtime", sorted((k, v) for k, v in c.items() if k[0] in ("FullyConnected", "MatMul")))
ref, bf = np.load(f"{HERE}/scores_ov_f32.npy"), np.load(f"{HERE}/scores_ov_bf16.npy")
print("bf16 vs f32", json.dumps(compare(ref, bf, z["group"])))
