"""Dev accuracy of an exported OpenVINO int8 folder through the backend (prefix reuse on), vs OV f32 whole prompts."""
import sys, json, numpy as np
sys.path.insert(0, "/work/nncf_proto")
from common import load_rows, compare
from prorank_edge.backends.openvino_backend import OpenVinoBackend
from prorank_edge.contract import shared_prefix_length
out, setname = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "dev"
rows, z = load_rows(f"/work/nncf_proto/{setname}.npz")
ref = np.load(f"/work/nncf_proto/scores_ov_f32{'_dev' if setname == 'dev' else ''}.npy")
res = {}
for dt in ("float32", "bfloat16"):
    b = OpenVinoBackend(out, dtype=dt, threads=2)
    s = np.zeros(len(rows), np.float32)
    for g in np.unique(z["group"]):
        idx = np.where(z["group"] == g)[0]
        rr = [list(rows[i]) for i in idx]
        cut = shared_prefix_length(rr)
        for k in range(0, len(idx), 16):
            s[idx[k:k+16]] = b.score_with_prefix(rr[0][:cut], [r[cut:] for r in rr[k:k+16]])
    res[dt] = {k: round(v, 4) for k, v in compare(ref, s, z["group"]).items()}
print(out, setname, json.dumps(res))
