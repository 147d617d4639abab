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
The token embedding is a Gather, not a MatMul, and is quantized as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..formats import ADAPTER_WEIGHTS_FILENAME, MERGED_ADAPTER_FOLDER
from .onnx_int8 import _constant_matmuls, weight_key

#: node-name suffixes of the two fp32 MatMuls that carry an adapter's delta (kept out of the 4-bit quantizer)
_DOWN, _UP, _SUM = "/adapter_a", "/adapter_b", "/adapter_add"


def adapter_low_rank(model_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Weight key of each merged weight as the ONNX graph stores it ([in, out], onnx_int8.weight_key) ->
    (A.T [in, r], B.T [r, out]) of its delta, for a checkpoint that keeps its adapter; None for any other."""
    from safetensors.numpy import load_file

    from ..adapter import adapter_factors

    model_dir = Path(model_dir)
    adapter_dir = model_dir / MERGED_ADAPTER_FOLDER
    if not (adapter_dir / ADAPTER_WEIGHTS_FILENAME).is_file():
        return None
    low_rank, _ = adapter_factors(adapter_dir)
    merged = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        merged.update(load_file(str(file)))
    return {weight_key(merged[name].astype(np.float32).T): (np.ascontiguousarray(a.T), np.ascontiguousarray(b.T))
            for name, (b, a) in low_rank.items() if name in merged and merged[name].ndim == 2}


def split_low_rank(model, low_rank: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[object, list[str], int]:
    """The model (an onnx ModelProto, changed in place) with each MatMul whose weight is in `low_rank` split into
    a base MatMul plus the adapter's two thin fp32 MatMuls; returns (model, names of the thin MatMuls, count
    of MatMuls split)."""
    from onnx import helper, numpy_helper

    matmuls = {index: weight for index, _, weight in _constant_matmuls(model)}
    nodes, excluded, replaced, split = [], [], set(), 0
    for index, node in enumerate(model.graph.node):
        nodes.append(node)
        weight = matmuls.get(index)
        factors = low_rank.get(weight_key(weight)) if weight is not None else None
        if factors is None:
            continue
        a_t, b_t = factors
        # The same subtraction and product as the merge (adapter.adapter_deltas: B @ A in float32), so the base
        # comes back within one float32 rounding of what was merged, well inside a 4-bit step.
        base = weight - (b_t.T @ a_t.T).T
        name = node.name or f"matmul_{split}"
        stem = f"{node.input[1]}/split{split}"
        model.graph.initializer.extend([numpy_helper.from_array(base.astype(np.float32), stem + "/base"),
                                        numpy_helper.from_array(a_t, stem + _DOWN),
                                        numpy_helper.from_array(b_t, stem + _UP)])
        output = node.output[0]
        replaced.add(node.input[1])
        node.input[1] = stem + "/base"
        node.output[0] = output + "/base"
        nodes.extend([
            helper.make_node("MatMul", [node.input[0], stem + _DOWN], [output + _DOWN], name=name + _DOWN),
            helper.make_node("MatMul", [output + _DOWN, stem + _UP], [output + _UP], name=name + _UP),
            helper.make_node("Add", [output + "/base", output + _UP], [output], name=name + _SUM),
        ])
        excluded += [name + _DOWN, name + _UP]
        split += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used or init.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model, excluded, split
