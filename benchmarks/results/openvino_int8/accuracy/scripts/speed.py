"""Quick decision aid (not a bench figure): docs/s of openvino artifacts, bf16, prefix cache, dev40 queries 0-4, best of 2."""
import sys, time, numpy as np
sys.path.insert(0, "/work/nncf_proto")
from common import load_rows
from prorank_edge.backends.openvino_backend import OpenVinoBackend
from prorank_edge.contract import shared_prefix_length
rows, z = load_rows("/work/ovx/dev40/dev40.npz")
for d in sys.argv[1:]:
    b = OpenVinoBackend(d, dtype="bfloat16", threads=2); best = 0
    for rep in range(3):
        t = time.perf_counter(); n = 0
        for g in range(5):
            idx = np.where(z["group"] == g)[0]; rr = [list(rows[i]) for i in idx]; cut = shared_prefix_length(rr)
            for k in range(0, len(idx), 16):
                b.score_with_prefix(rr[0][:cut], [r[cut:] for r in rr[k:k+16]]); n += len(rr[k:k+16])
        if rep: best = max(best, n / (time.perf_counter() - t))
    print(d, round(best, 2), "docs/s", flush=True)
