"""ONNX int8 that computes in int8: per-token 8-bit activations times per-channel 8-bit weights.

Each MatMul with a constant weight W [K, N] becomes MatMulInteger on onnxruntime's integer GEMM (MLAS: VNNI on
AVX-512/AVX-VNNI, dot-product instructions on ARM), between

- the weight, int8 with one scale per output column, and
- the input activations X [..., K], rounded to 8 bits with one scale per token (row), computed in the graph
  at run time. A scale per tensor (onnxruntime's quantize_dynamic) lets the one token with huge activations
  (the first, "attention sink") flatten every other row: per-query Spearman 0.22 on SmolLM2-135M, where
  per-token scales give 0.89.

Two calibrated corrections, both measured on SmolLM2-135M (16 SciFact test queries x BM25 top 20, against
fp32 scores), make up the rest:

- smoothing (SmoothQuant, Xiao et al. 2023, as export/smoothing.py does for GGUF): input channel j is divided
  by s_j = max|x_j|^alpha / max|W_j,:|^(1 - alpha) and W's row j multiplied by it. Here the division is a Mul
  in the graph before the rounding, so it works on any exported graph without torch. alpha 0.8: 0.89 -> 0.96.
- outlier channels (LLM.int8(), Dettmers et al. 2022): a few input channels of the MLP's down projection
  carry activations hundreds of times the rest even after smoothing, and no 8-bit row scale holds both.
  Channels whose calibrated maximum exceeds OUTLIER_RATIO x the median are taken out of the int8 product
  (their smoothing factor is set to 0) and multiplied in fp32 beside it: a [rows, k] x [k, N] MatMul with
  k of a few channels.

Activations are stored as uint8 with a fixed zero point of 128 (u8 x s8 is MLAS's fast path; s8 x s8
activations ran 8x slower). Weights keep all 8 bits (|q| <= 127): 7-bit weights, which would rule out the
saturating int16 sums of AVX2's u8 x s8 instruction (vpmaddubsw) on CPUs without VNNI, dropped the Spearman
correlation from 0.978 to 0.913. The ONNX backend therefore warns when it runs a w8a8 artifact on an x86 CPU
without VNNI (devices.int8_sums_may_saturate).

Measured (16 SciFact test queries x BM25 top 20, AMD EPYC with AVX-512 VNNI, 2 threads): per-query Spearman
against fp32 0.978 (min 0.958) at 1.8x the fp32 graph's docs/s; onnxruntime's quantize_dynamic (per-tensor)
reached 2.4x at Spearman 0.22.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: migration strength of the smoothing, by measurement (per-query Spearman on SmolLM2-135M): without outlier
#: channels 0.894 at 0, 0.952 at 0.5, 0.961 at 0.8; with them (ratio 20) 0.952 at 0.5, 0.978 at 0.8, 0.967 at 0.9
INT8_SMOOTHING_ALPHA = 0.8
#: a channel whose calibrated max |x| exceeds this multiple of the median channel's goes the fp32 way
#: (ratio 20: 47 channels in SmolLM2-135M's 210 matmuls, Spearman 0.978; ratio 50: 10 channels, 0.976)
OUTLIER_RATIO = 20.0
#: at most this share of a matmul's input channels go the fp32 way (the rest of the gain is int8's)
OUTLIER_MAX_SHARE = 0.02
#: weight levels (symmetric int8; see the module docstring for why not 7 bits)
WEIGHT_LEVELS = 127
ACTIVATION_LEVELS = 127
ACTIVATION_ZERO_POINT = 128


def weight_key(weight: np.ndarray) -> str:
    """Identity of a weight by content: the reuse graphs hold the same tensors as model.onnx under other names,
    and must be quantized with exactly the same factors so their bytes can be shared."""
    return hashlib.sha1(np.ascontiguousarray(weight, dtype=np.float32).tobytes()).hexdigest()


def _constant_matmuls(model) -> list[tuple[int, object, np.ndarray]]:
    """(index in graph.node, node, fp32 weight [K, N]) of every MatMul whose second input is a 2-D float
    initializer."""
    from onnx import TensorProto, numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    found = []
    for index, node in enumerate(model.graph.node):
        init = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        if init is not None and init.data_type == TensorProto.FLOAT and len(init.dims) == 2:
            found.append((index, node, numpy_helper.to_array(init)))
    return found


def calibrate(model_path: Path, feeds: Sequence[dict], covariance: bool = False) -> dict[str, dict]:
    """Per-input-channel max |x| of every constant-weight MatMul's input, from onnxruntime runs of the fp32
    graph on `feeds`; returns weight key -> {"x_max", "w_max" (max |W_j,:| over the weights sharing the input)},
    and with `covariance` "xtx": the sum of x x^T over the prompts' tokens (padding left out), float64 [K, K].
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    matmuls = _constant_matmuls(model)
    inputs = sorted({node.input[0] for _, node, _ in matmuls})
    existing = {o.name for o in model.graph.output}
    for name in inputs:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    # Unoptimized: fusions could swallow the tensors asked for as outputs.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x_max: dict[str, np.ndarray] = {}
    xtx: dict[str, np.ndarray] = {}
    for feed in feeds:
        tokens = np.asarray(feed["attention_mask"]).reshape(-1) == 1 if covariance else None
        for name, value in zip(inputs, session.run(inputs, feed)):
            rows = value.reshape(-1, value.shape[-1])
            # Padding rows are real inputs of the kernel too: they are rounded with the rest.
            m = np.abs(rows).max(0)
            x_max[name] = np.maximum(x_max[name], m) if name in x_max else m
            if covariance:  # what the scores depend on: the prompts' own tokens
                real = (rows[tokens] if len(tokens) == len(rows) else rows).astype(np.float64)
                xtx[name] = xtx.get(name, 0.0) + real.T @ real
    groups: dict[str, list[np.ndarray]] = {}
    for _, node, weight in matmuls:
        groups.setdefault(node.input[0], []).append(weight)
    stats = {}
    for _, node, weight in matmuls:
        w_max = np.max([np.abs(w).max(1) for w in groups[node.input[0]]], axis=0)
        stats[weight_key(weight)] = {"x_max": x_max[node.input[0]], "w_max": w_max}
        if covariance:
            stats[weight_key(weight)]["xtx"] = xtx[node.input[0]]
    return stats


def channel_factors(stats: dict, alpha: float = INT8_SMOOTHING_ALPHA, outlier_ratio: float = OUTLIER_RATIO,
                    outlier_max_share: float = OUTLIER_MAX_SHARE) -> dict[str, dict]:
    """Weight key -> {"scale": s [K] (the weight's rows are multiplied by it, the input divided),
    "outliers": input channels computed in fp32 (sorted)}."""
    from .smoothing import channel_factor

    factors = {}
    for key, stat in stats.items():
        x_max = np.maximum(stat["x_max"], 1e-5)
        s = channel_factor(x_max, stat["w_max"], alpha) if alpha > 0 else np.ones(len(x_max), np.float32)
        # Outliers by the raw maxima: smoothing would hide them, and it is what they defeat.
        cap = int(outlier_max_share * len(x_max))
        order = np.argsort(-x_max)[:cap]
        outliers = np.sort(order[x_max[order] > outlier_ratio * np.median(x_max)])
        factors[key] = {"scale": s, "outliers": outliers.astype(np.int64)}
    return factors


def quantize_int8(model, factors: dict[str, dict]):
    """The model (an onnx ModelProto, changed in place and returned) with every constant-weight MatMul on
    integer compute. `factors`: from channel_factors, for every weight of the graph (see weight_key); a
    weight's "activation_passes" (default 1) of 0 keeps its MatMul in fp32, 2 rounds its input twice."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    passes = {f.get("activation_passes", 1) for f in factors.values()}
    if not passes <= {0, 1, 2}:
        raise ValueError(f"activation_passes must be 0, 1 or 2, got {sorted(passes - {0, 1, 2})}")
    found = [m for m in _constant_matmuls(model) if factors[weight_key(m[2])].get("activation_passes", 1) != 0]
    matmuls = {index: weight for index, _, weight in found}
    replaced = {node.input[1] for _, node, _ in found}
    new_initializers = []

    def constant(name, value):
        new_initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    constant("int8/levels", np.array(ACTIVATION_LEVELS, np.float32))
    constant("int8/zero_point", np.array(ACTIVATION_ZERO_POINT, np.uint8))
    constant("int8/tiny", np.array(1e-30, np.float32))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 13:  # per-axis QuantizeLinear reads one scale per row, flattened
        constant("int8/flat", np.array([-1], np.int64))
    else:  # no per-axis QuantizeLinear: Round, then the zero point added as a float
        constant("int8/offset", np.array(ACTIVATION_ZERO_POINT, np.float32))
    if opset >= 18:
        constant("int8/last_axis", np.array([-1], np.int64))

    def reduce_max(source, target):  # the axes became an input in opset 18
        if opset >= 18:
            return helper.make_node("ReduceMax", [source, "int8/last_axis"], [target], keepdims=1)
        return helper.make_node("ReduceMax", [source], [target], axes=[-1], keepdims=1)

    quantized_inputs: dict[str, str] = {}  # activation tensor -> prefix of its rounded form
    residual_inputs: set[str] = set()  # rounded forms whose remainder is rounded too (two-pass activations)
    nodes = []
    for index, node in enumerate(graph.node):
        weight = matmuls.get(index)
        if weight is None:
            nodes.append(node)
            continue
        f = factors[weight_key(weight)]
        x, p = node.input[0], f"int8/{len(new_initializers)}"
        if x not in quantized_inputs:
            # One rounding per activation tensor: q, k and v (gate and up) read the same input.
            inverse = 1.0 / f["scale"]
            inverse[f["outliers"]] = 0.0  # those channels take the fp32 path below
            nodes += [
                helper.make_node("Mul", [x, constant(p + "/inverse_scale", inverse)], [p + "/x"]),
                helper.make_node("Abs", [p + "/x"], [p + "/abs"]),
                reduce_max(p + "/abs", p + "/max"),
                helper.make_node("Div", [p + "/max", "int8/levels"], [p + "/raw_step"]),
                helper.make_node("Max", [p + "/raw_step", "int8/tiny"], [p + "/step"]),
            ]
            if opset >= 13:
                # One QuantizeLinear per row (axis 0 of the rows x channels view, a scale per row) does the
                # division, rounding (half to even, as Round), zero point and cast in one vectorized pass where
                # Div, Round, Add and Cast took four: those four were 12% of the w8a8 graph's time on 10 x 256
                # tokens (onnxruntime's profiler, SmolLM2-135M, Ice Lake Xeon).
                nodes += [
                    helper.make_node("Shape", [p + "/x"], [p + "/shape"]),
                    helper.make_node("Reshape", [p + "/x", constant(p + "/rows_shape",
                                                                    np.array([-1, weight.shape[0]], np.int64))],
                                     [p + "/rows"]),
                    helper.make_node("Reshape", [p + "/step", "int8/flat"], [p + "/row_step"]),
                    # per-axis zero points must match the scales' length (one per row, known at run time)
                    helper.make_node("Shape", [p + "/row_step"], [p + "/row_count"]),
                    helper.make_node("Expand", ["int8/zero_point", p + "/row_count"], [p + "/row_zero_point"]),
                    helper.make_node("QuantizeLinear", [p + "/rows", p + "/row_step", p + "/row_zero_point"],
                                     [p + "/q_rows"], axis=0),
                    helper.make_node("Reshape", [p + "/q_rows", p + "/shape"], [p + "/q"]),
                ]
            else:
                nodes += [
                    helper.make_node("Div", [p + "/x", p + "/step"], [p + "/scaled"]),
                    helper.make_node("Round", [p + "/scaled"], [p + "/rounded"]),
                    helper.make_node("Add", [p + "/rounded", "int8/offset"], [p + "/shifted"]),
                    helper.make_node("Cast", [p + "/shifted"], [p + "/q"], to=TensorProto.UINT8),
                ]
            quantized_inputs[x] = p
        q = quantized_inputs[x]
        two_pass = f.get("activation_passes", 1) == 2
        if two_pass and q not in residual_inputs:
            if opset < 13:
                raise ValueError("two-pass activations need opset >= 13 (per-axis QuantizeLinear)")
            if not residual_inputs:
                constant("int8/residual_levels", np.array(2 * ACTIVATION_LEVELS, np.float32))
            # The rounding's remainder (|r| <= step / 2) rounded again with step / 254: the two 8-bit passes
            # together hold the activations to ~16 bits, on the same integer GEMM (twice).
            nodes += [
                helper.make_node("DequantizeLinear", [q + "/q_rows", q + "/row_step", q + "/row_zero_point"],
                                 [q + "/dq_rows"], axis=0),
                helper.make_node("Sub", [q + "/rows", q + "/dq_rows"], [q + "/r_rows"]),
                helper.make_node("Div", [q + "/row_step", "int8/residual_levels"], [q + "/r_row_step"]),
                helper.make_node("QuantizeLinear", [q + "/r_rows", q + "/r_row_step", q + "/row_zero_point"],
                                 [q + "/qr_rows"], axis=0),
                helper.make_node("Reshape", [q + "/qr_rows", q + "/shape"], [q + "/qr"]),
                helper.make_node("Div", [q + "/step", "int8/residual_levels"], [q + "/r_step"]),
            ]
            residual_inputs.add(q)
        smoothed = weight * f["scale"][:, None]
        smoothed[f["outliers"]] = 0.0
        w_step = np.maximum(np.abs(smoothed).max(0), 1e-30) / WEIGHT_LEVELS
        w_int = np.clip(np.round(smoothed / w_step), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8)
        out = node.output[0]
        has_outliers = len(f["outliers"]) > 0
        int_out = p + "/int_part" if has_outliers else out
        nodes += [
            helper.make_node("MatMulInteger", [q + "/q", constant(p + "/weight", w_int), "int8/zero_point"],
                             [p + "/int32"]),
            helper.make_node("Cast", [p + "/int32"], [p + "/float"], to=TensorProto.FLOAT),
        ]
        if two_pass:  # (q1 step1 + q2 step2) W: the two products summed in float, then the weight's steps
            nodes += [
                helper.make_node("Mul", [p + "/float", q + "/step"], [p + "/first"]),
                helper.make_node("MatMulInteger", [q + "/qr", p + "/weight", "int8/zero_point"], [p + "/r_int32"]),
                helper.make_node("Cast", [p + "/r_int32"], [p + "/r_float"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [p + "/r_float", q + "/r_step"], [p + "/second"]),
                helper.make_node("Add", [p + "/first", p + "/second"], [p + "/sum"]),
                helper.make_node("Mul", [p + "/sum", constant(p + "/weight_step", w_step.astype(np.float32))],
                                 [int_out]),
            ]
        else:
            nodes += [
                helper.make_node("Mul", [q + "/step", constant(p + "/weight_step", w_step.astype(np.float32))],
                                 [p + "/out_step"]),
                helper.make_node("Mul", [p + "/float", p + "/out_step"], [int_out]),
            ]
        if has_outliers:
            nodes += [
                helper.make_node("Gather", [x, constant(p + "/outlier_channels", f["outliers"])],
                                 [p + "/outlier_x"], axis=-1),
                helper.make_node("MatMul", [p + "/outlier_x", constant(p + "/outlier_rows",
                                                                       weight[f["outliers"]].astype(np.float32))],
                                 [p + "/outlier_part"]),
                helper.make_node("Add", [int_out, p + "/outlier_part"], [out]),
            ]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name not in replaced or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_initializers)
    return model

