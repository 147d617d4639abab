"""torch bf16 / fp32 (the project's TorchBackend, whole prompts, no prefix cache) on the same prompts as
time_int8.py: the first 96 of eval.npz, batches of 16 longest first, warm-up once, best of 3. Main venv."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_docs_per_s, eval_rows  # noqa: E402

from prorank_edge.backends.torch_backend import TorchBackend  # noqa: E402

rows, _ = eval_rows(96)
for dtype in sys.argv[1:] or ["bfloat16"]:
    backend = TorchBackend("/root/.cache/prorank-edge/models/SmolLM2-135M-Instruct-prorank-f5da8765827a",
                           dtype=dtype, device="cpu", threads=2)
    docs_per_s, best = best_docs_per_s(backend.score_batch, rows)
    print(f"torch {dtype}: {docs_per_s:.2f} docs/s (best {best:.2f} s)", flush=True)
