"""The project's ONNX w8a8 artifact (onnxruntime, whole prompts) on the same prompts: Spearman against OpenVINO f32
on all 200 eval prompts, and docs/s on the first 96 as time_int8.py / time_torch.py (batches of 16, best of 3)."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, "/work/nncf_proto")
sys.path.insert(0, str(Path(__file__).parent))
from common import compare  # noqa: E402
from timing import HERE, best_docs_per_s, eval_rows  # noqa: E402

from prorank_edge.backends.onnx_backend import OnnxBackend  # noqa: E402

rows, z = eval_rows()
backend = OnnxBackend(sys.argv[1], threads=2)
scores = np.concatenate([backend.score_batch(rows[s:s + 16]) for s in range(0, len(rows), 16)])
print("vs OpenVINO f32", compare(np.load(f"{HERE}/scores_ov_f32.npy"), scores, z["group"]))
docs_per_s, best = best_docs_per_s(backend.score_batch, rows)
print(f"onnxruntime w8a8: {docs_per_s:.2f} docs/s (best {best:.2f} s)")
