"""benchmarks/w8a8_sensitivity.py's channel split: the cut graph computes what the original does, inputs read by
several matmuls are cut once, and quantized, the wide channels no longer set the other channels' grid."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import requires_exact_int8_sums  # noqa: E402

from prorank_edge.benchmarks.w8a8_sensitivity import split_channels  # noqa: E402
from prorank_edge.export import onnx_int8  # noqa: E402


def _two_matmuls_on_one_input(first: np.ndarray, second: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["y1"], name="one"),
         helper.make_node("MatMul", ["x", "w2"], ["y2"], name="two")], "two_matmuls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, first.shape[0]])],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(first, "w1"), numpy_helper.from_array(second, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


@requires_exact_int8_sums
def test_split_keeps_the_products_and_gives_wide_channels_their_own_scales(tmp_path):
    rng = np.random.default_rng(0)
    first, second = (rng.normal(size=(32, n)).astype(np.float32) for n in (16, 8))
    x = rng.normal(size=(2, 5, 32)).astype(np.float32)
    x[..., [3, 17]] *= 12.0  # wide channels, below the outlier ratio: they stay in the int8 product
    model = _two_matmuls_on_one_input(first, second)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    stats = onnx_int8.calibrate(path, [{"x": x}])

    split = split_channels(onnx.ModelProto.FromString(model.SerializeToString()), stats, share=0.0625)
    ops = [n.op_type for n in split.graph.node]
    assert ops.count("Gather") == 2 and ops.count("MatMul") == 4  # one cut of x, shared by both matmuls
    for got, exact in zip(_run(split, x), _run(model, x)):
        np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5)

    def error(graph, graph_stats):
        factors = onnx_int8.channel_factors(graph_stats, alpha=0.0, outlier_ratio=1e9)
        quantized = onnx_int8.quantize_int8(onnx.ModelProto.FromString(graph.SerializeToString()), factors)
        assert [n.op_type for n in quantized.graph.node].count("MatMulInteger") == len(graph_stats)
        return sum(np.abs(q - e).mean() for q, e in zip(_run(quantized, x), _run(model, x)))

    split_path = tmp_path / "split.onnx"
    onnx.save(split, str(split_path))
    assert error(split, onnx_int8.calibrate(split_path, [{"x": x}])) < 0.5 * error(model, stats)
