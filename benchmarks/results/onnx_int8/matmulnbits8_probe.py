"""MatMulNBits 8-bit, accuracy_level 4 (int8 activations per block) on this onnxruntime: speed and accuracy
against the fp32 graph and the w8a8 artifact, on dev pairs (held-out SciFact train queries)."""
import sys, time, json, glob
import numpy as np, onnx, onnxruntime as ort
from pathlib import Path
from prorank_edge.benchmarks.w8a8_sensitivity import dev_groups, feeds_of, load_prompts
from prorank_edge.export.parity import spearman
from prorank_edge.benchmarks.harness import machine_info
B = Path(glob.glob('/root/.cache/prorank-edge/bench-artifacts/*fp32-r4-onnx')[0])
W = next(iter(glob.glob('/root/.cache/prorank-edge/bench-artifacts/*w8a8-r4-onnx')), None)  # optional
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 1  # best of REPS passes (noisy shared VMs: 2)
prompts = load_prompts(B)
groups = dev_groups("../shared/data/beir/scifact", 30, 10, 0)
feeds = feeds_of(prompts, [p for g in groups for p in g])
sizes = [len(g) for g in groups]
def sess(m):
    o = ort.SessionOptions(); o.intra_op_num_threads = 2
    return ort.InferenceSession(m if isinstance(m, str) else m.SerializeToString(), o, providers=["CPUExecutionProvider"])
def run(s, reps=1):
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter(); sc = np.concatenate([s.run(["score"], f)[0].reshape(-1) for f in feeds]); best = min(best, time.perf_counter() - t)
    return sc, best
def rho(a, b):
    r, at = [], 0
    for n in sizes: r.append(spearman(a[at:at+n], b[at:at+n])); at += n
    return float(np.mean(r))
out = {"machine": machine_info(), "ort": ort.__version__}
ref, t_ref = run(sess(str(B / "model.onnx")), REPS)
out["fp32_s"] = t_ref
if W is not None:
    w, t_w = run(sess(str(W / "model.onnx")), REPS)
    out["w8a8"] = {"s": t_w, "spearman": rho(ref, w), "mad": float(np.abs(w - ref).mean())}
print(json.dumps(out), flush=True)
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer, DefaultWeightOnlyQuantConfig
for bits, level in [(8, 4), (8, 0), (4, 4), (4, 0)]:
    cfg = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=level, bits=bits, op_types_to_quantize=("MatMul",))
    q = MatMulNBitsQuantizer(onnx.load(str(B / "model.onnx")), algo_config=cfg, bits=bits, block_size=32, is_symmetric=True, accuracy_level=level, op_types_to_quantize=("MatMul",))
    q.process()
    s, t = run(sess(q.model.model), REPS)
    out[f"nbits{bits}_acc{level}"] = {"s": t, "x_fp32": t_ref / t, "spearman": rho(ref, s), "mad": float(np.abs(s - ref).mean())}
    print(json.dumps(out[f"nbits{bits}_acc{level}"]), flush=True)
json.dump(out, open("benchmarks/results/onnx_int8/matmulnbits8_probe.json", "w"), indent=1)
