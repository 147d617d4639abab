"""ONNX int4 of a checkpoint that is a base plus a low-rank adapter: the base in 4 bits, the adapter's delta exact.

Rounding a fine-tuned weight to 4 bits erases the fine-tuning. The built-in reranker is SmolLM2-135M, whose
weights come from a Q4_1 GGUF and so sit exactly on the 4-bit min-max grid of blocks of 32, plus a delta that
training added (until 2026-12-07 round 5's rank-48 LoRA, which the figures here were measured on; since then
a rank-16 SVD plus a 1-bit rest, below). The delta is smaller than one grid step: on 4 of its matrices, what
survives of it after 4-bit rounding of the merged weight has a cosine of 0.07-0.08 with the real delta, and the rounding
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

An adapter with a 1-bit part (`train adapter --one-bit`: each row of a 2-D delta is +-s, one sign a weight and one
scale a row) is split the same way, its part kept exact too:

    X @ W.T  ->  ... + (X @ sign.T) * s

where `sign` holds +-1. The sign MatMul goes to 4 bits like the base, and exactly so: every block of 32 of +-1
has its extremes on the min-max grid (codes 0 and 15, or one value alone), whatever s is; s itself multiplies
the product in fp32 (folded into the weights, a row of tiny s would meet the quantizer's clamp of 2e4 on the
inverse scale). This doubles the 4-bit MatMul work. The embedding's 1-bit rows are gathered packed, 8 signs a
byte, and unpacked in the graph (BitShift, BitwiseAnd).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..adapter import merged_adapter_parts, sign_matrix, unpack_signs
from .onnx_int8 import _constant_matmuls, weight_key

#: node-name suffixes of the two fp32 nodes that carry an adapter's low-rank delta (kept out of the 4-bit
#: quantizer), and of the 1-bit part's sign MatMul (4-bit, exactly) and its scale
_DOWN, _UP, _SUM = "/adapter_a", "/adapter_b", "/adapter_add"
_SIGNS, _SIGN_SCALE = "/adapter_signs", "/adapter_sign_scale"
#: values per scale of the 8-bit embedding table (GGUF Q8_0's block)
Q8_BLOCK = 32


class SplitParts(NamedTuple):
    """What the int4 graph keeps apart from one merged weight's 4-bit base."""

    #: (left, right), `left @ right` the low-rank delta in the layout the graph holds the weight (a MatMul's
    #: [in, out], a Gather's [rows, width]); None without a low-rank part
    low_rank: tuple[np.ndarray, np.ndarray] | None
    #: the 1-bit part in the checkpoint's [rows, cols] layout, packed 8 signs a byte along each row as the adapter
    #: stores it (numpy.packbits: first sign in the high bit; a set bit is +scale); None without one
    signs: np.ndarray | None
    #: float32 [rows], the 1-bit part's magnitude per row
    scales: np.ndarray | None

    def delta(self, matmul: bool) -> np.ndarray:
        """The whole delta in the graph's layout, computed as adapter.adapter_deltas adds it (B @ A, then the
        1-bit part), so the base comes back within one float32 rounding of what was merged."""
        delta = None
        if self.low_rank is not None:
            left, right = self.low_rank
            delta = right.T @ left.T if matmul else left @ right  # B @ A in the checkpoint's layout
        if self.signs is not None:
            coded = unpack_signs(self.signs, self.scales)
            delta = coded if delta is None else delta + coded
        return delta.T if matmul else delta


def adapter_parts(model_dir: str | Path) -> dict[str, SplitParts] | None:
    """For a checkpoint that keeps its adapter (None for any other): weight key (onnx_int8.weight_key) of each
    merged 2-D weight as a graph may hold it (a MatMul's [in, out] weight and a Gather's [rows, width] table) ->
    its SplitParts."""
    from safetensors.numpy import load_file

    model_dir = Path(model_dir)
    parts = merged_adapter_parts(model_dir)
    if parts is None:
        return None
    low_rank, signs = parts
    merged = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        merged.update(load_file(str(file)))
    keys = {}
    for name in sorted(set(low_rank) | set(signs)):
        if name not in merged or merged[name].ndim != 2:
            continue
        weight = merged[name].astype(np.float32)
        bits, scales = signs.get(name, (None, None))
        b, a = low_rank.get(name, (None, None))
        keys[weight_key(weight.T)] = SplitParts(
            None if b is None else (np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)), bits, scales)
        keys[weight_key(weight)] = SplitParts(None if b is None else (b, a), bits, scales)
    return keys


def _q8_blocks(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and float32 scales [rows, width / 32] of symmetric blocks of 32 along each row (GGUF Q8_0)."""
    rows, width = table.shape
    blocks = table.reshape(rows, width // Q8_BLOCK, Q8_BLOCK)
    scales = np.abs(blocks).max(-1) / 127
    safe = np.where(scales > 0, scales, 1)
    values = np.clip(np.round(blocks / safe[..., None]), -127, 127).astype(np.int8)
    return values.reshape(rows, width), scales.astype(np.float32)


def split_adapter(model, parts: dict[str, SplitParts]) -> tuple[object, list[str], int]:
    """The model (an onnx ModelProto, changed in place) with each MatMul or Gather whose weight is in `parts`
    split into the base and the adapter's delta; returns (model, names of the nodes the 4-bit quantizers must
    leave alone, count of weights split)."""
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
        found = parts.get(weight_key(weight)) if weight is not None else None
        if found is None:
            continue
        is_matmul = original.op_type == "MatMul"
        if not is_matmul and weight.shape[1] % Q8_BLOCK:
            excluded.append(original.name)  # no 8-bit blocks fit the row: the table stays as merged, in fp32
            continue
        base = weight - found.delta(is_matmul)
        name, output = original.name or f"split_{split}", original.output[0]
        stem = f"{original.input[1 if is_matmul else 0]}/split{split}"
        replaced.add(original.input[1 if is_matmul else 0])
        terms = []
        if is_matmul:
            x = original.input[0]
            original.output[0] = output + "/base"
            original.input[1] = constant(stem + "/base", base.astype(np.float32))
            if found.low_rank is not None:
                left, right = found.low_rank
                down = node("MatMul", [x, constant(stem + _DOWN, left)], output + _DOWN, name + _DOWN)
                terms.append(node("MatMul", [down, constant(stem + _UP, right)], output + _UP, name + _UP))
                excluded += [name + _DOWN, name + _UP]
            if found.signs is not None:  # left to the 4-bit quantizer, which keeps +-1 exactly
                signs = np.ascontiguousarray(sign_matrix(found.signs).T)
                product = node("MatMul", [x, constant(stem + _SIGNS, signs)], output + _SIGNS, name + _SIGNS)
                terms.append(node("Mul", [product, constant(stem + _SIGN_SCALE, found.scales)],
                                  output + _SIGN_SCALE, name + _SIGN_SCALE))
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
            last = constant(stem + "/last", np.array([-1]))
            per_block = node("Unsqueeze", [row_scales, last], output + "/scales_1", name + "/scales_1")
            blocks = node("Reshape", [rows, blocked], output + "/blocks", name + "/blocks")
            scaled = node("Mul", [blocks, per_block], output + "/scaled", name + "/scaled")
            node("Reshape", [scaled, flat], output + "/base", name + "/base")
            excluded += [name, name + "/scales"]
            if found.low_rank is not None:
                left, right = found.low_rank
                down = node("Gather", [constant(stem + _DOWN, left), ids], output + _DOWN, name + _DOWN, axis=0)
                terms.append(node("MatMul", [down, constant(stem + _UP, right)], output + _UP, name + _UP))
                excluded += [name + _DOWN, name + _UP]
            if found.signs is not None:
                terms.append(_gather_signs(node, constant, found, ids, flat, last, stem, name, output))
                excluded += [name + _SIGNS, name + _SIGN_SCALE + "/rows"]
        total = output + "/base"
        for number, term in enumerate(terms):
            total = node("Add", [total, term], output if number == len(terms) - 1 else f"{output}{_SUM}{number}",
                         name + _SUM if number == len(terms) - 1 else f"{name}{_SUM}{number}")
        split += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for n in model.graph.node for name in n.input}
    kept = [init for init in model.graph.initializer if init.name in used or init.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model, excluded, split


def _gather_signs(node, constant, found: SplitParts, ids: str, flat: str, last: str, stem: str, name: str,
                  output: str) -> str:
    """The embedding's 1-bit rows for `ids`: gathered as packed bytes (8 signs each, first sign in the high bit,
    as numpy.packbits writes them), unpacked to +-1 and scaled by each row's s."""
    from onnx import TensorProto

    packed = node("Gather", [constant(stem + _SIGNS, found.signs), ids], output + _SIGNS, name + _SIGNS, axis=0)
    column = node("Unsqueeze", [packed, last], output + _SIGNS + "/column", name + _SIGNS + "/column")
    shifted = node("BitShift", [column, constant(stem + "/shifts", np.arange(7, -1, -1, dtype=np.uint8))],
                   output + _SIGNS + "/shifted", name + _SIGNS + "/shifted", direction="RIGHT")
    bits = node("BitwiseAnd", [shifted, constant(stem + "/one", np.array(1, dtype=np.uint8))],
                output + _SIGNS + "/bits", name + _SIGNS + "/bits")
    ones = node("Cast", [bits], output + _SIGNS + "/float", name + _SIGNS + "/float", to=TensorProto.FLOAT)
    doubled = node("Mul", [ones, constant(stem + "/two", np.array(2.0, dtype=np.float32))],
                   output + _SIGNS + "/doubled", name + _SIGNS + "/doubled")
    plus_minus = node("Sub", [doubled, constant(stem + "/unit", np.array(1.0, dtype=np.float32))],
                      output + _SIGNS + "/pm", name + _SIGNS + "/pm")
    signs = node("Reshape", [plus_minus, flat], output + _SIGNS + "/flat", name + _SIGNS + "/flat")
    row_scales = node("Gather", [constant(stem + _SIGN_SCALE, found.scales), ids], output + _SIGN_SCALE + "/rows",
                      name + _SIGN_SCALE + "/rows", axis=0)
    per_row = node("Unsqueeze", [row_scales, last], output + _SIGN_SCALE + "/column", name + _SIGN_SCALE + "/column")
    return node("Mul", [signs, per_row], output + _SIGN_SCALE, name + _SIGN_SCALE)
