"""Experiment: export_openvino recipe on the round-5 256 fp32 artifact; dev accuracy vs OV f32."""
import sys, json, time, numpy as np, openvino as ov
sys.path.insert(0, "/work/nncf_proto")
from common import load_rows, compare, batches
from prorank_edge.export.openvino_export import export_openvino
from prorank_edge.backends.openvino_backend import read_ir
from prorank_edge.contract import left_pad
tag, calib, alpha = sys.argv[1], sys.argv[2], float(sys.argv[3])
pairs = None
if calib == "scifact":
    from prorank_edge.evaluation.beir import load_beir
    import random
    train = load_beir("/work/shared/data/beir/scifact", "train")
    rng = random.Random(0); tq = list(train.queries); rng.shuffle(tq); tq = tq[:16]
    from prorank_edge.evaluation.bm25 import BM25Retriever
    bm = BM25Retriever(train.corpus); docs, _ = bm.retrieve([train.queries[q] for q in tq], 3)
    ids = list(train.corpus)
    pairs = [(train.queries[q], train.corpus[d].full_text) for q, dl in zip(tq, docs) for d in list(dl) + [rng.choice(ids)]]
if calib == "long":
    from prorank_edge.export.parity import BUILTIN_QUERIES, BUILTIN_DOCUMENTS
    D = list(BUILTIN_DOCUMENTS); n = len(D)
    pairs = [(q, " ".join(D[(i + j) % n] for j in range(int(sys.argv[4])))) for q in BUILTIN_QUERIES for i in range(n)]
out = f"/work/ovx/{tag}"
t = time.time()
info = export_openvino("/work/nncf_proto/onnx-fp32", out, overwrite=True, calibration_pairs=pairs, alpha=alpha)
print("export s", time.time() - t, json.dumps(info["openvino"], indent=0)[:1500], info["files"])
rows, z = load_rows("/work/nncf_proto/dev.npz")
ref = np.load("/work/nncf_proto/scores_ov_f32_dev.npy")
core = ov.Core()
res = {}
for prec in ("f32", "bf16"):
    cm = core.compile_model(read_ir(core, f"{out}/model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": prec, "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2"})
    req = cm.create_infer_request(); s = np.zeros(len(rows), np.float32)
    for b in batches(rows, 16):
        i, m = left_pad([rows[k] for k in b]); s[b] = np.asarray(req.infer({"input_ids": i, "attention_mask": m})["score"]).reshape(-1)
    res[prec] = {k: round(v, 4) for k, v in compare(ref, s, z["group"]).items()}
print(tag, json.dumps(res))
json.dump(res, open(f"/work/ovx/res_{tag}.json", "w"))
