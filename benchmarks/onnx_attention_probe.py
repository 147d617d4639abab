"""Is onnxruntime's fused attention worth a graph rewrite on this CPU? (issue 14, item 3)

The exported graph runs each layer's attention as eager ONNX ops: MatMul(Q, K^T) scaled, the shared 4-D
additive mask added, Softmax, MatMul with V, Transpose and Reshape back. onnxruntime fuses the scale into the
first MatMul (FusedMatMul) but nothing else. Its CPU kernel com.microsoft.MultiHeadAttention takes the same
mask as `attention_bias`; with a mask it cannot use MLAS flash attention (only unmasked, non-causal calls do),
so the question is whether the one kernel beats the ops it replaces. This times one layer's attention both ways
at the built-in model's shape (9 heads of 64, 256 tokens, 10 prompts), interleaved, best of --repeats, and
checks that both give the same output.

    .venv/bin/python benchmarks/onnx_attention_probe.py --output benchmarks/results/onnx_attention_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))



def graphs(batch: int, heads: int, tokens: int, head_size: int):
    from onnx import TensorProto, helper

    hidden = heads * head_size
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, heads, tokens, head_size]) for n in "qkv"]
    inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, 1, tokens, tokens]))
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [batch, tokens, hidden])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [head_size ** -0.5])
    eager = helper.make_graph([
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Mul", ["qk", "scale"], ["qk_scaled"]),
        helper.make_node("Add", ["qk_scaled", "mask"], ["qk_masked"]),
        helper.make_node("Softmax", ["qk_masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o"]),
        helper.make_node("Transpose", ["o"], ["o_bsnh"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["o_bsnh", "shape"], ["out"]),
    ], "eager", inputs, [output], [scale, shape])
    fused = helper.make_graph([
        helper.make_node("Transpose", ["q"], ["q_bsnh"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["q_bsnh", "shape"], ["q_bsd"]),
        helper.make_node("MultiHeadAttention", ["q_bsd", "k", "v", "", "", "mask"], ["out"],
                         domain="com.microsoft", num_heads=heads),
    ], "fused", inputs, [output], [shape])
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    return {name: helper.make_model(g, opset_imports=opsets, ir_version=10) for name, g in
            (("eager ops", eager), ("MultiHeadAttention", fused))}


def main() -> None:
    import onnxruntime as ort

    from prorank_edge.benchmarks.harness import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {name: ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for name, model in graphs(args.batch, args.heads, args.tokens, args.head_size).items()}
    rng = np.random.default_rng(0)
    shape = (args.batch, args.heads, args.tokens, args.head_size)
    feeds = {name: rng.standard_normal(shape, dtype=np.float32) for name in "qkv"}
    # causal, and the first 20 positions of every prompt are left padding
    mask = np.triu(np.full((args.tokens, args.tokens), np.finfo(np.float32).min, np.float32), 1)
    mask = np.repeat(mask[None, None], args.batch, 0)
    mask[..., :20] = np.finfo(np.float32).min
    feeds["mask"] = mask
    outputs = {name: s.run(None, feeds)[0] for name, s in sessions.items()}
    a, b = outputs.values()
    diff = float(np.abs(a - b)[:, 20:].max())  # padding rows attend to nothing: their output is arbitrary
    times = {name: [] for name in sessions}
    for rep in range(args.repeats):
        for name in (list(sessions) if rep % 2 == 0 else list(sessions)[::-1]):
            t0 = time.perf_counter()
            sessions[name].run(None, feeds)
            times[name].append(time.perf_counter() - t0)
    best = {name: min(t) * 1000 for name, t in times.items()}
    for name, ms in best.items():
        print(f"{name:>20}: {ms:.1f} ms per layer (best of {args.repeats})")
    print(f"max |difference| on unpadded rows: {diff:.2g}; eager / fused: "
          f"{best['eager ops'] / best['MultiHeadAttention']:.2f}x")
    if args.output:
        report = {"machine": {**machine_info(), "threads": args.threads, "onnxruntime": ort.__version__},
                  "shape": {"batch": args.batch, "heads": args.heads, "tokens": args.tokens,
                            "head_size": args.head_size},
                  "best_ms": best, "times_s": times, "max_abs_difference": diff}
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
