"""Shared helpers (nncf venv): load the .npz prompt sets, left-pad like the backend, score with OpenVINO, compare."""
import numpy as np
import openvino as ov
from scipy.stats import spearmanr

HERE = "/work/nncf_proto"


def load_rows(path):
    z = np.load(path, allow_pickle=False)
    flat, offs = z["flat"], z["offsets"]
    rows = [flat[offs[i]:offs[i + 1]] for i in range(len(offs) - 1)]
    return rows, z


def left_pad(rows):
    # same as prorank_edge.contract.left_pad: pad id 0, mask 0 on the left
    w = max(len(r) for r in rows)
    ids = np.zeros((len(rows), w), np.int64)
    mask = np.zeros((len(rows), w), np.int64)
    for i, r in enumerate(rows):
        ids[i, w - len(r):] = r
        mask[i, w - len(r):] = 1
    return ids, mask


def batches(rows, size=16):
    # longest first, as prorank_edge.contract.length_batches
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    return [order[i:i + size] for i in range(0, len(order), size)]


def compile_model(model, precision="f32", threads=2):
    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY",
           "INFERENCE_NUM_THREADS": str(threads)}
    return core.compile_model(model, "CPU", cfg)


def score(compiled, rows, size=16):
    req = compiled.create_infer_request()
    out = np.zeros(len(rows), np.float32)
    for b in batches(rows, size):
        ids, mask = left_pad([rows[i] for i in b])
        res = req.infer({"input_ids": ids, "attention_mask": mask})
        out[b] = np.asarray(res["score"], np.float32).reshape(-1)
    return out


def compare(ref, new, group):
    sp, top1, top10 = [], [], []
    for g in np.unique(group):
        m = group == g
        sp.append(spearmanr(ref[m], new[m]).statistic)
        top1.append(np.argmax(ref[m]) == np.argmax(new[m]))
        top10.append(len(set(np.argsort(-ref[m])[:10]) & set(np.argsort(-new[m])[:10])) / 10)
    d = np.abs(ref - new)
    return {"spearman_mean": float(np.mean(sp)), "spearman_min": float(np.min(sp)),
            "top1_agree": float(np.mean(top1)), "top10_overlap": float(np.mean(top10)),
            "max_abs": float(d.max()), "mean_abs": float(d.mean()), "ref_score_std": float(ref.std())}


def runtime_precisions(compiled):
    """(layerType, runtimePrecision) counts of the executed graph, for the matmul-like layers and overall."""
    import collections
    c = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        lt = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        rp = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
        pt = rt["primitiveType"].astype(str) if "primitiveType" in rt else "?"
        c[(lt, rp, pt)] += 1
    return c
