import sys, json
sys.path[:0] = ["/work/main"]
import numpy as np
from pathlib import Path
from prorank_edge.backends.onnx_backend import OnnxBackend
art = Path.home() / ".cache/prorank-edge/bench-artifacts"
res = {}
for quant in ("w8a8", "fp32"):
    b = OnnxBackend(next(art.glob(f"*-{quant}-r3-onnx")), device="cpu")
    a = b.prompts.build("does vitamin d reduce fracture risk", ["Vitamin D supplements and fracture risk in older adults: a randomized trial of 2000 people."])[0]
    n = len(a)
    alone = b.run_model(np.array([a], np.int64), np.ones((1, n), np.int64))[0]
    out = {}
    for pads in (1, 8, 40):
        ids = np.array([[0] * pads + a], np.int64)
        mask = np.array([[0] * pads + [1] * n], np.int64)
        out[f"left_pad_{pads}"] = float(b.run_model(ids, mask)[0] - alone)
        ids = np.array([a + [0] * pads], np.int64)
        # right pads after the last token: the score is read at the row's last position, so these are real-ended
    res[quant] = out
    b.close()
print(json.dumps(res))
