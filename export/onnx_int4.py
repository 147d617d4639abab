"""ONNX int4 of a checkpoint that is a base plus a low-rank adapter: the base in 4 bits, the adapter's delta exact.

Rounding a fine-tuned weight to 4 bits erases the fine-tuning. The built-in reranker is SmolLM2-135M, whose
weights come from a Q4_1 GGUF and so sit exactly on the 4-bit min-max grid of blocks of 32, plus a rank-48
delta that training added. The delta is smaller than one grid step: on 4 of its matrices, what survives of it
after 4-bit rounding of the merged weight has a cosine of 0.07-0.08 with the real delta, and the rounding
error (norm 0.40-1.08) is larger than the delta itself (0.33-0.88). The int4 artifact of the merged model
therefore scored like the untrained base (per-query Spearman 0.39 against fp32 on SciFact).

So where the checkpoint carries the adapter it was merged from (adapter.apply_adapter keeps it in
MERGED_ADAPTER_FOLDER), each MatMul whose weight has a low-rank delta `B @ A` is split before quantizing:

    X @ W.T  ->  X @ (W - B @ A).T  +  (X @ A.T) @ B.T

The first MatMul holds the base weight, which 4-bit rounding keeps exactly when the base is on the grid (and
with ordinary 4-bit error otherwise), and becomes MatMulNBits like every plain int4 MatMul; the two thin ones
hold the adapter's factors in fp32 and are excluded from quantization. The cost is the factors' bytes and
2 x rank x (in + out) multiply-adds per token and matrix (SmolLM2 at rank 48: about 11% of the matrices' own).

The token embedding (a Gather) is split alike, `table[ids] -> base[ids] + B[ids] @ A`, and its base is kept in
8 bits (symmetric, a scale per 32 values, GGUF Q8_0's grid, which is how SmolLM2's file stores it): with the
matmuls split, the 4-bit table was all that was left of the error (built-in model, 4 SciFact queries x 10:
per-query Spearman 0.976 with it, 1.000 and max drift 6e-5 with the table in fp32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .onnx_int8 import _constant_matmuls, weight_key

#: node-name suffixes of the two fp32 nodes that carry an adapter's delta (kept out of the 4-bit quantizer)
_DOWN, _UP, _SUM = "/adapter_a", "/adapter_b", "/adapter_add"
#: values per scale of the 8-bit embedding table (GGUF Q8_0's block)
Q8_BLOCK = 32


def adapter_low_rank(model_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """For a checkpoint that keeps its adapter (None for any other): weight key (onnx_int8.weight_key) of each
    merged 2-D weight as a graph may hold it -> (left, right) with `left @ right` its delta in that layout: a
    MatMul's [in, out] weight -> (A.T, B.T), a Gather's [rows, width] table -> (B, A)."""
    from safetensors.numpy import load_file

    from ..adapter import merged_adapter_factors

    model_dir = Path(model_dir)
    low_rank = merged_adapter_factors(model_dir)
    if low_rank is None:
        return None
    merged = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        merged.update(load_file(str(file)))
    keys = {}
    for name, (b, a) in low_rank.items():
        if name in merged and merged[name].ndim == 2:
            weight = merged[name].astype(np.float32)
            keys[weight_key(weight.T)] = (np.ascontiguousarray(a.T), np.ascontiguousarray(b.T))
            keys[weight_key(weight)] = (b, a)
    return keys


def _q8_blocks(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and float32 scales [rows, width / 32] of symmetric blocks of 32 along each row (GGUF Q8_0)."""
    rows, width = table.shape
    blocks = table.reshape(rows, width // Q8_BLOCK, Q8_BLOCK)
    scales = np.abs(blocks).max(-1) / 127
    safe = np.where(scales > 0, scales, 1)
    values = np.clip(np.round(blocks / safe[..., None]), -127, 127).astype(np.int8)
    return values.reshape(rows, width), scales.astype(np.float32)


def split_low_rank(model, low_rank: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[object, list[str], int]:
    """The model (an onnx ModelProto, changed in place) with each MatMul or Gather whose weight is in `low_rank`
    split into the base and the adapter's delta in fp32; returns (model, names of the nodes the 4-bit
    quantizers must leave alone, count of weights split)."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    matmuls = {index: weight for index, _, weight in _constant_matmuls(model)}
    nodes, excluded, replaced, split = [], [], set(), 0

    def constant(name, value):
        model.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def node(op, inputs, output, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    for index, original in enumerate(model.graph.node):
        nodes.append(original)
        if original.op_type == "MatMul":
            weight = matmuls.get(index)
        elif original.op_type == "Gather" and original.input[0] in initializers:
            init = initializers[original.input[0]]
            weight = numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT and len(init.dims) == 2 \
                else None
        else:
            weight = None
        factors = low_rank.get(weight_key(weight)) if weight is not None else None
        if factors is None:
            continue
        left, right = factors
        if original.op_type == "Gather" and weight.shape[1] % Q8_BLOCK:
            excluded.append(original.name)  # no 8-bit blocks fit the row: the table stays as merged, in fp32
            continue
        # The same product as the merge (adapter.adapter_deltas: B @ A in float32), so the base comes back
        # within one float32 rounding of what was merged.
        delta = (right.T @ left.T).T if original.op_type == "MatMul" else left @ right
        base = weight - delta
        name, output = original.name or f"split_{split}", original.output[0]
        data = 0 if original.op_type == "Gather" else 1
        stem = f"{original.input[data]}/split{split}"
        replaced.add(original.input[data])
        if original.op_type == "MatMul":
            original.output[0] = output + "/base"
            original.input[1] = constant(stem + "/base", base.astype(np.float32))
            down = node("MatMul", [original.input[0], constant(stem + _DOWN, left)], output + _DOWN, name + _DOWN)
            delta_out = node("MatMul", [down, constant(stem + _UP, right)], output + _UP, name + _UP)
            excluded += [name + _DOWN, name + _UP]
        else:
            ids, width = original.input[1], base.shape[1]
            values, scales = _q8_blocks(base)
            original.input[0] = constant(stem + "/base_q8", values)
            original.output[0] = output + "/base_q8"  # int8 rows, scaled back to float as output + "/base"
            rows = node("Cast", [output + "/base_q8"], output + "/rows", name + "/cast", to=TensorProto.FLOAT)
            shape = node("Shape", [ids], output + "/ids_shape", name + "/ids_shape")
            blocked = node("Concat", [shape, constant(stem + "/blocks", np.array([width // Q8_BLOCK, Q8_BLOCK]))],
                           output + "/blocked_shape", name + "/blocked_shape", axis=0)
            flat = node("Concat", [shape, constant(stem + "/width", np.array([width]))], output + "/flat_shape",
                        name + "/flat_shape", axis=0)
            row_scales = node("Gather", [constant(stem + "/scales", scales), ids], output + "/scales",
                              name + "/scales")
            per_block = node("Unsqueeze", [row_scales, constant(stem + "/last", np.array([-1]))],
                             output + "/scales_1", name + "/scales_1")
            blocks = node("Reshape", [rows, blocked], output + "/blocks", name + "/blocks")
            scaled = node("Mul", [blocks, per_block], output + "/scaled", name + "/scaled")
            node("Reshape", [scaled, flat], output + "/base", name + "/base")
            down = node("Gather", [constant(stem + _DOWN, left), ids], output + _DOWN, name + _DOWN, axis=0)
            delta_out = node("MatMul", [down, constant(stem + _UP, right)], output + _UP, name + _UP)
            excluded += [name, name + "/scales", name + _DOWN, name + _UP]
        node("Add", [output + "/base", delta_out], output, name + _SUM)
        split += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for n in model.graph.node for name in n.input}
    kept = [init for init in model.graph.initializer if init.name in used or init.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model, excluded, split
