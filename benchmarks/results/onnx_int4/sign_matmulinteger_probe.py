"""Probe (issue 14, 2026-12-08): the int4 artifact's 1-bit adapter part as an integer MatMul instead of a second
4-bit MatMulNBits. Not an exporter change: it rewrites an exported int4 model.onnx.

Every `adapter_signs` MatMulNBits (+-1 weights on a 4-bit grid) becomes DynamicQuantizeLinear (one per distinct
input, per-tensor uint8) + MatMulInteger against the int8 signs + Cast + Mul by the input's scale. On AVX2,
onnxruntime's u8 x s8 kernel adds products in saturating int16 pairs; with |w| = 1 a pair sums to at most 510,
so it cannot saturate, and the activation rounding only touches the small 1-bit delta (row scales ~1e-3).

    python sign_matmulinteger_probe.py INT4_DIR OUT_BASE   # writes OUT_BASE-whole (original graph) and OUT_BASE-int
Both copies keep only model.onnx (whole prompts), so benchmarks/artifact_ab.py compares like with like.

    .venv/bin/python benchmarks/artifact_ab.py --a OUT_BASE-whole --b OUT_BASE-int --queries 6 --top-k 20 --repeats 2 \
        --output benchmarks/results/onnx_int4/sign_matmulinteger_ab_avx2.json

AVX2-only EPYC, 2 cores, the built-in default since 2026-12-07 (2026-12-08): 1.26 -> 1.52 docs/s (1.21x best, 1.18x
paired median), per-query Spearman 0.99975 against the exact int4, largest score drift 0.30.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from prorank_edge.formats import ONNX_MODEL_FILENAME, ONNX_PREFIX_MODEL_FILENAME, ONNX_SUFFIX_MODEL_FILENAME


def unpack_signs(packed, scales, zero_points, n, k, block):
    blocks = k // block
    codes = np.empty((n, blocks, block), np.int16)
    packed = packed.reshape(n, blocks, block // 2)
    codes[:, :, 0::2] = packed & 0x0F
    codes[:, :, 1::2] = packed >> 4
    # the exporter writes the +-1 grid with float zero points (7.5 a block)
    values = (codes - zero_points.reshape(n, blocks, 1)) * scales.reshape(n, blocks, 1)
    return np.sign(values.reshape(n, k)).astype(np.int8)   # [N, K]


def main(src: str, out: str) -> None:
    src = Path(src)
    m = onnx.load(str(src / ONNX_MODEL_FILENAME))
    inits = {t.name: t for t in m.graph.initializer}
    quantized = {}   # input name -> (q, scale, zero point)
    new_nodes, new_inits, replaced = [], [], 0
    for node in m.graph.node:
        if node.op_type != "MatMulNBits" or "adapter_signs" not in node.name:
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        n, k, block = attrs["N"], attrs["K"], attrs["block_size"]
        signs = unpack_signs(numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[node.input[2]]),
                             numpy_helper.to_array(inits[node.input[3]]), n, k, block)
        x = node.input[0]
        if x not in quantized:
            q = (x + "/dq_q", x + "/dq_scale", x + "/dq_zp")
            new_nodes.append(helper.make_node("DynamicQuantizeLinear", [x], list(q), name=x + "/dq"))
            quantized[x] = q
        q, scale, zp = quantized[x]
        w = node.name + "/signs_s8"
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(signs.T), w))   # [K, N]
        y = node.output[0]
        new_nodes.append(helper.make_node("MatMulInteger", [q, w, zp], [y + "/i32"], name=node.name + "/mmi"))
        new_nodes.append(helper.make_node("Cast", [y + "/i32"], [y + "/f32"], to=onnx.TensorProto.FLOAT))
        new_nodes.append(helper.make_node("Mul", [y + "/f32", scale], [y], name=node.name + "/rescale"))
        for name in node.input[1:]:
            inits.pop(name, None)
        replaced += 1
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    del m.graph.initializer[:]
    m.graph.initializer.extend(list(inits.values()) + new_inits)
    print(f"replaced {replaced} sign MatMulNBits, {len(quantized)} DynamicQuantizeLinear")
    for suffix, model in (("whole", None), ("int", m)):
        dst = Path(f"{out}-{suffix}")
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.name not in (ONNX_MODEL_FILENAME, ONNX_PREFIX_MODEL_FILENAME, ONNX_SUFFIX_MODEL_FILENAME):
                shutil.copy(f, dst / f.name)
        if model is None:
            shutil.copy(src / ONNX_MODEL_FILENAME, dst / ONNX_MODEL_FILENAME)
        else:
            onnx.save(model, str(dst / ONNX_MODEL_FILENAME))


if __name__ == "__main__":
    main(*sys.argv[1:3])
