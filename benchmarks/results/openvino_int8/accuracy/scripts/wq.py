"""Weight-only int8 (per output channel, symmetric) of the int8 MatMuls in fp32 model.onnx, after smoothing with alpha
(the error smoothing moves into weights), scored on dev40's first N queries by OpenVINO f32."""
import sys, json, numpy as np, onnx, openvino as ov
from onnx import numpy_helper
sys.path.insert(0, "/work/nncf_proto")
from common import load_rows, compare, score
import prorank_edge.export.onnx_int8 as oi
from prorank_edge.export.openvino_export import int8_matmuls
from prorank_edge.export.smoothing import channel_factor
nq = int(sys.argv[1]); alphas = [float(a) for a in sys.argv[2:]]
rows, z = load_rows("/work/ovx/dev40/dev40.npz"); ref = np.load("/work/ovx/dev40/ref_f32.npy")
sel = z["group"] < nq; rows = [r for r, s in zip(rows, sel) if s]; ref, grp = ref[sel], z["group"][sel]
import pickle
from prorank_edge.contract import PromptBuilder, ScoringContract
from prorank_edge.export.onnx_export import onnx_feeds
from tokenizers import Tokenizer
ART = "/work/nncf_proto/onnx-fp32"
pb = PromptBuilder(Tokenizer.from_file(f"{ART}/tokenizer.json"), ScoringContract.load(ART))
by_q = {}
for q, d in pickle.load(open("/work/ov2/pairs.pkl", "rb")): by_q.setdefault(q, []).append(d)
stats = oi.calibrate(f"{ART}/model.onnx", onnx_feeds([r for q, ds in by_q.items() for r in pb.build(q, ds)]))
for a in alphas:
    m = onnx.load(f"{ART}/model.onnx"); keys, _ = int8_matmuls(m)
    inits = {i.name: i for i in m.graph.initializer}
    for _, node, w in oi._constant_matmuls(m):
        k = oi.weight_key(w)
        if k not in keys: continue
        s = channel_factor(np.maximum(stats[k]["x_max"], 1e-5), stats[k]["w_max"], a) if a > 0 else np.ones(w.shape[0], np.float32)
        ws = w * s[:, None]; sc = np.maximum(np.abs(ws).max(0), 1e-12) / 127
        inits[node.input[1]].CopyFrom(numpy_helper.from_array((np.round(ws / sc) * sc / s[:, None]).astype(np.float32), node.input[1]))
    c = ov.Core().compile_model(ov.Core().read_model(m.SerializeToString(), ov.Tensor(np.zeros(0, np.uint8))) if False else ov.Core().read_model(m.SerializeToString(), b""), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "2"}) if False else None
    onnx.save(m, "/work/ov2/wq_tmp.onnx")
    c = ov.Core().compile_model("/work/ov2/wq_tmp.onnx", "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "2", "NUM_STREAMS": "1"})
    s = score(c, rows)
    print(json.dumps({"alpha": a, **{k: round(v, 4) for k, v in compare(ref, s, grp).items()}}), flush=True)
