"""OpenVINO f32 and bf16 scores of dev.npz (the reference the sweep compares against)."""
import json
import numpy as np
from common import HERE, compare, compile_model, load_rows, score
rows, z = load_rows(f"{HERE}/dev.npz")
out = {p: score(compile_model(f"{HERE}/ir-fp32/model.xml", p), rows) for p in ("f32", "bf16")}
np.save(f"{HERE}/scores_ov_f32_dev.npy", out["f32"])
print("dev bf16 vs f32", json.dumps(compare(out["f32"], out["bf16"], z["group"])))
