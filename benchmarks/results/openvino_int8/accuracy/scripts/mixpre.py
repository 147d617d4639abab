"""Prefix graph from one artifact, suffix graph from another: is the int8 error in the shared prefix?"""
import sys, json, numpy as np
sys.path.insert(0, "/work/nncf_proto")
from common import load_rows, compare
from prorank_edge.backends.openvino_backend import OpenVinoBackend
from prorank_edge.contract import shared_prefix_length
pre_dir, suf_dir, dt, nq = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows, z = load_rows("/work/ovx/dev40/dev40.npz"); ref = np.load("/work/ovx/dev40/ref_f32.npy")
bp = OpenVinoBackend(pre_dir, dtype=dt, threads=2); bs = OpenVinoBackend(suf_dir, dtype=dt, threads=2)
bs.prefix_request = bp.prefix_request
sel = z["group"] < nq; s = np.zeros(len(rows), np.float32)
for g in range(nq):
    idx = np.where(z["group"] == g)[0]; rr = [list(rows[i]) for i in idx]; cut = shared_prefix_length(rr)
    for k in range(0, len(idx), 16):
        s[idx[k:k+16]] = bs.score_with_prefix(rr[0][:cut], [r[cut:] for r in rr[k:k+16]])
print(pre_dir, suf_dir, dt, json.dumps({k: round(v, 4) for k, v in compare(ref[sel], s[sel], z["group"][sel]).items()}))
