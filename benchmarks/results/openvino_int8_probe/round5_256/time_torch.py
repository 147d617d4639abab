"""torch bf16 / fp32 (the project's TorchBackend, whole prompts, no prefix cache) on the same prompts as
time_int8.py: the first 96 of eval.npz, batches of 16 longest first, warm-up once, best of 3. Main venv."""
import sys
import time

import numpy as np

from prorank_edge.backends.torch_backend import TorchBackend

HERE = "/work/nncf_proto"
z = np.load(f"{HERE}/eval.npz")
flat, offs = z["flat"], z["offsets"]
rows = [flat[offs[i]:offs[i + 1]].tolist() for i in range(96)]
order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
batches = [[rows[i] for i in order[s:s + 16]] for s in range(0, len(order), 16)]
for dtype in sys.argv[1:] or ["bfloat16"]:
    backend = TorchBackend("/root/.cache/prorank-edge/models/SmolLM2-135M-Instruct-prorank-f5da8765827a",
                           dtype=dtype, device="cpu", threads=2)
    backend.score_batch(batches[0])
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for b in batches:
            backend.score_batch(b)
        best = min(best, time.perf_counter() - t)
    print(f"torch {dtype}: {96 / best:.2f} docs/s (best {best:.2f} s)", flush=True)
