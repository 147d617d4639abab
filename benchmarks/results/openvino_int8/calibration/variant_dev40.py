"""export_openvino variant (calibrated on 16 train queries that are not dev queries), scored on dev40 with the
prefix cache at f32 and bf16 against OV f32."""
import sys, json, random, numpy as np
sys.path.insert(0, "/work/nncf_proto")
from common import load_rows, compare
import prorank_edge.export.openvino_export as oe
from prorank_edge.backends.openvino_backend import OpenVinoBackend
from prorank_edge.contract import shared_prefix_length
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
tag, keep = sys.argv[1], sys.argv[2:]  # keep: regexes of MatMul names to keep float as well
import re
orig = oe.int8_matmuls
def patched(model):
    keys, keep_float = orig(model)
    if not keep: return keys, keep_float
    from prorank_edge.export.onnx_int8 import _constant_matmuls, weight_key
    for _, node, w in _constant_matmuls(model):
        if any(re.search(k, node.name) for k in keep) and weight_key(w) in keys:
            keys.discard(weight_key(w)); keep_float.append(node.name)
    return keys, keep_float
oe.int8_matmuls = patched
dev_q = set(np.load("/work/ovx/dev40/dev_qids.npy").tolist())
train = load_beir("/work/shared/data/beir/scifact", "train")
rng = random.Random(0); tq = sorted(q for q in train.queries if q not in dev_q); rng.shuffle(tq); tq = tq[:16]
top, _ = BM25Retriever(train.corpus).retrieve([train.queries[q] for q in tq], 3)
ids = list(train.corpus)
pairs = [(train.queries[q], train.corpus[d].full_text) for q, dl in zip(tq, top) for d in [*dl, rng.choice(ids)]]
out = f"/work/ovx/dev40/{tag}"
info = oe.export_openvino("/work/nncf_proto/onnx-fp32", out, overwrite=True, calibration_pairs=pairs)
rows, z = load_rows("/work/ovx/dev40/dev40.npz"); ref = np.load("/work/ovx/dev40/ref_f32.npy")
res = {"keep": keep, "int8_weights": info["openvino"]["graphs"]["model.onnx"]["int8_weights"]}
for dt in ("float32", "bfloat16"):
    b = OpenVinoBackend(out, dtype=dt, threads=2); s = np.zeros(len(rows), np.float32)
    for g in np.unique(z["group"]):
        idx = np.where(z["group"] == g)[0]; rr = [list(rows[i]) for i in idx]; cut = shared_prefix_length(rr)
        for k in range(0, len(idx), 16):
            s[idx[k:k+16]] = b.score_with_prefix(rr[0][:cut], [r[cut:] for r in rr[k:k+16]])
    res[dt] = {k: round(v, 4) for k, v in compare(ref, s, z["group"]).items()}
    np.save(f"/work/ovx/dev40/scores_{tag}_{dt}.npy", s)
print(tag, json.dumps(res)); json.dump(res, open(f"/work/ovx/dev40/res_{tag}.json", "w"))
