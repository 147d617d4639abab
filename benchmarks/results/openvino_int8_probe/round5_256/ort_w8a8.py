"""The project's ONNX w8a8 artifact (onnxruntime, whole prompts) on the same prompts: Spearman against OpenVINO f32
on all 200 eval prompts, and docs/s on the first 96 as time_int8.py / time_torch.py (batches of 16, best of 3)."""
import sys
import time

import numpy as np

sys.path.insert(0, "/work/nncf_proto")
from common import compare  # noqa: E402

from prorank_edge.backends.onnx_backend import OnnxBackend  # noqa: E402

HERE = "/work/nncf_proto"
z = np.load(f"{HERE}/eval.npz")
flat, offs = z["flat"], z["offsets"]
rows = [flat[offs[i]:offs[i + 1]].tolist() for i in range(len(offs) - 1)]
backend = OnnxBackend(sys.argv[1], threads=2)
scores = np.concatenate([backend.score_batch(rows[s:s + 16]) for s in range(0, len(rows), 16)])
print("vs OpenVINO f32", compare(np.load(f"{HERE}/scores_ov_f32.npy"), scores, z["group"]))
order = sorted(range(96), key=lambda i: -len(rows[i]))
batches = [[rows[i] for i in order[s:s + 16]] for s in range(0, 96, 16)]
backend.score_batch(batches[0])
best = float("inf")
for _ in range(3):
    t = time.perf_counter()
    for b in batches:
        backend.score_batch(b)
    best = min(best, time.perf_counter() - t)
print(f"onnxruntime w8a8: {96 / best:.2f} docs/s (best {best:.2f} s)")
