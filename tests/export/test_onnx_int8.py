"""ONNX w8a8 (export/onnx_int8.py): the graph really computes in int8, the arithmetic matches a numpy model of it,
outlier channels take the fp32 path, and exported random Qwen2/Llama models keep their scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import mixed_length_pairs, onnx_backend, requires_exact_int8_sums  # noqa: E402

from prorank_edge.devices import int8_sums_may_saturate  # noqa: E402
from prorank_edge.export import onnx_int8  # noqa: E402


def _one_matmul_model(weight: np.ndarray, opset: int = 17):
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "one_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, n])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _integer_product(xq: np.ndarray, wq: np.ndarray) -> np.ndarray:
    """xq @ wq as onnxruntime's u8 x s8 GEMM computes it on this CPU: exactly where the CPU has VNNI (and off x86);
    on x86 without it (AVX2's vpmaddubsw), each pair of neighbouring products of the stored u8 activations
    (xq + 128) and the weights added into saturating int16, and the zero point's share taken off afterwards."""
    if not int8_sums_may_saturate():
        return xq @ wq
    stored = xq + 128.0
    if stored.shape[-1] % 2:
        stored = np.concatenate([stored, np.zeros((*stored.shape[:-1], 1))], -1)
        wq = np.vstack([wq, np.zeros(wq.shape[1])])
    products = stored[..., :, None] * wq
    pairs = np.clip(products[..., 0::2, :] + products[..., 1::2, :], -32768, 32767)
    return pairs.sum(-2) - 128.0 * wq.sum(0)


def _numpy_w8a8(x: np.ndarray, weight: np.ndarray, factors: dict) -> np.ndarray:
    """The arithmetic the module docstring describes, in float64 numpy."""
    s, outliers = factors["scale"].astype(np.float64), factors["outliers"]
    inverse = 1.0 / s
    inverse[outliers] = 0.0
    xs = x * inverse
    step = np.maximum(np.abs(xs).max(-1, keepdims=True) / 127, 1e-30)
    xq = np.round(xs / step)
    w = weight * s[:, None]
    w[outliers] = 0.0
    w_step = np.maximum(np.abs(w).max(0), 1e-30) / 127
    wq = np.clip(np.round(w / w_step), -127, 127)
    return _integer_product(xq, wq) * step * w_step + x[..., outliers] @ weight[outliers]


@pytest.mark.parametrize("opset", [17, 12])  # 12: before per-axis QuantizeLinear, the Round path
def test_w8a8_matches_its_numpy_model_and_splits_outliers(opset):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 48)).astype(np.float32)
    calibration = rng.normal(size=(2, 5, 64)).astype(np.float32)
    calibration[..., 7] *= 300.0  # one input channel carries massive activations, as in an LM's down projection
    model = _one_matmul_model(weight, opset)
    stats = {onnx_int8.weight_key(weight): {"x_max": np.abs(calibration).reshape(-1, 64).max(0),
                                            "w_max": np.abs(weight).max(1)}}
    factors = onnx_int8.channel_factors(stats, alpha=0.5, outlier_ratio=20.0, outlier_max_share=0.05)
    (only,) = factors.values()
    assert list(only["outliers"]) == [7]

    quantized = onnx_int8.quantize_int8(onnx.ModelProto.FromString(model.SerializeToString()), factors)
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("MatMulInteger") == 1 and ops.count("Gather") == 1 and ops.count("MatMul") == 1
    # the rounding is one QuantizeLinear per row, not Div, Round, Add and Cast (four passes over the input)
    assert (ops.count("QuantizeLinear"), ops.count("Round")) == ((1, 0) if opset >= 13 else (0, 1))
    assert "w" not in {i.name for i in quantized.graph.initializer}  # the fp32 weight is gone
    x = rng.normal(size=(3, 6, 64)).astype(np.float32)
    x[..., 7] *= 300.0
    got, exact = _run(quantized, x), x.astype(np.float64) @ weight
    assert np.abs(got - _numpy_w8a8(x.astype(np.float64), weight.astype(np.float64), only)).max() < 1e-3
    # The outlier channel kept out of the rounding: without the split its range would flatten every other one.
    no_split = onnx_int8.channel_factors(stats, alpha=0.5, outlier_ratio=1e9)
    unsplit = _run(onnx_int8.quantize_int8(onnx.ModelProto.FromString(model.SerializeToString()), no_split), x)
    if not int8_sums_may_saturate():  # (where the CPU saturates the sums, its own error swamps both)
        assert np.abs(got - exact).max() < 0.5 * np.abs(unsplit - exact).max()


@requires_exact_int8_sums
def test_w8a8_two_pass_activations_and_fp32_matmuls():
    """activation_passes 2 rounds the input's remainder again (about 16-bit activations on the same integer
    GEMM), 0 leaves the MatMul as it was: both are what benchmarks/w8a8_sensitivity.py measures with."""
    rng = np.random.default_rng(2)
    weight = rng.normal(size=(64, 48)).astype(np.float32)
    model = _one_matmul_model(weight)
    stats = {onnx_int8.weight_key(weight): {"x_max": np.full(64, 3.0), "w_max": np.abs(weight).max(1)}}
    x = rng.normal(size=(3, 6, 64)).astype(np.float32)
    x[..., 3] *= 40.0  # one wide channel, unsmoothed: its range sets every row's step, as in an LM
    exact = x.astype(np.float64) @ weight

    def quantized(passes):
        factors = onnx_int8.channel_factors(stats, alpha=0.0, outlier_ratio=1e9)
        for f in factors.values():
            f["activation_passes"] = passes
        return onnx_int8.quantize_int8(onnx.ModelProto.FromString(model.SerializeToString()), factors)

    one, two, kept = quantized(1), quantized(2), quantized(0)
    with pytest.raises(ValueError, match="activation_passes must be 0, 1 or 2"):
        quantized(3)
    assert [n.op_type for n in two.graph.node].count("MatMulInteger") == 2
    assert [n.op_type for n in kept.graph.node] == ["MatMul"]
    assert np.abs(_run(kept, x) - exact).max() < 1e-4
    # the second pass leaves only the weights' rounding: the error is that of fp32 inputs times int8 weights
    w_step = np.abs(weight).max(0) / 127
    weights_only = x.astype(np.float64) @ (np.clip(np.round(weight / w_step), -127, 127) * w_step)
    # (the second pass's step is 1/254 of the first's, so what is left of the activations' error is ~1/254)
    assert np.abs(_run(two, x) - weights_only).max() < 0.02 * np.abs(_run(one, x) - weights_only).max()
    assert np.abs(_run(two, x) - exact).mean() < 0.5 * np.abs(_run(one, x) - exact).mean()


def test_calibrate_reads_each_matmul_input(tmp_path):
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(16, 8)).astype(np.float32)
    feeds = [{"x": rng.normal(size=(2, 3, 16)).astype(np.float32)} for _ in range(2)]
    path = tmp_path / "m.onnx"
    onnx.save(_one_matmul_model(weight), str(path))
    stats = onnx_int8.calibrate(path, feeds)
    (stat,) = stats.values()
    expected = np.max([np.abs(f["x"]).reshape(-1, 16).max(0) for f in feeds], axis=0)
    assert np.allclose(stat["x_max"], expected) and np.allclose(stat["w_max"], np.abs(weight).max(1))


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_w8a8_export_computes_in_int8_and_keeps_scores(kind, request, tmp_path):
    from scipy.stats import spearmanr

    from prorank_edge.export.onnx_export import quantize_onnx

    fp32 = request.getfixturevalue(f"tiny_{kind}_onnx")
    info = quantize_onnx(fp32, tmp_path / "w8a8", "w8a8")
    artifact = tmp_path / "w8a8"
    assert info["w8a8"]["matmuls"] > 0 and json.loads((artifact / "export_info.json").read_text())["quant"] == "w8a8"
    source = onnx.load(str(fp32 / "model.onnx"))
    constant = {i.name for i in source.graph.initializer if len(i.dims) == 2}
    linear = sum(n.op_type == "MatMul" and n.input[1] in constant for n in source.graph.node)
    graph = onnx.load(str(artifact / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    # Every linear layer on the integer GEMM; an fp32 MatMul with a weight is left only for outlier rows.
    assert ops.count("MatMulInteger") == linear == info["w8a8"]["matmuls"]
    weights = {i.name for i in graph.initializer if len(i.dims) == 2}
    assert all("outlier_rows" in n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights)
    assert not any(n.op_type in ("MatMulNBits", "DynamicQuantizeMatMul") for n in graph.node)

    pairs = mixed_length_pairs()
    expected = onnx_backend(fp32).score_batch(onnx_backend(fp32).prompts.build_pairs(pairs))
    backend = onnx_backend(artifact)
    scores = backend.score_batch(backend.prompts.build_pairs(pairs))
    drift = np.abs(scores - expected).max()
    print(f"\n{kind} w8a8: max |w8a8 - fp32| {drift:.4f}, score range {np.ptp(expected):.3f}, "
          f"spearman {spearmanr(scores, expected).statistic:.4f}")
    if not int8_sums_may_saturate():  # (on x86 without VNNI the CPU's saturating sums add their own error)
        assert drift < 0.1 * np.ptp(expected)
        assert spearmanr(scores, expected).statistic > 0.9


def test_w8a8_warns_only_where_int8_sums_can_saturate(tiny_qwen2_onnx, tmp_path, monkeypatch):
    import warnings

    from prorank_edge import devices
    from prorank_edge.backends import onnx_backend as module
    from prorank_edge.export.onnx_export import quantize_onnx

    quantize_onnx(tiny_qwen2_onnx, tmp_path / "w8a8", "w8a8")
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert devices.int8_sums_may_saturate()
    with pytest.warns(RuntimeWarning, match="without VNNI"):
        module.OnnxBackend(tmp_path / "w8a8")
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        module.OnnxBackend(tmp_path / "w8a8")
        module.OnnxBackend(tiny_qwen2_onnx)


def test_w8a8_reuse_check_allows_rounding_noise_but_not_a_wrong_graph(tiny_qwen2_onnx, tmp_path, monkeypatch):
    """The reuse graphs of w8a8 are held to model.onnx's own distance from fp32 (export/onnx_export.py), so a
    rounding step landing differently passes, and scores off by more than that still fail the export."""
    from tokenizers import Tokenizer

    from prorank_edge.backends import onnx_backend
    from prorank_edge.contract import PromptBuilder, ScoringContract
    from prorank_edge.errors import ProrankError
    from prorank_edge.export import onnx_export
    from prorank_edge.export.onnx_export import quantize_onnx

    artifact = tmp_path / "w8a8"
    quantize_onnx(tiny_qwen2_onnx, artifact, "w8a8")
    prompts = PromptBuilder(Tokenizer.from_file(str(artifact / "tokenizer.json")), ScoringContract.load(artifact))
    onnx_export._check_reuse_graphs(artifact, prompts, "w8a8", tiny_qwen2_onnx / "model.onnx")
    real = onnx_backend.reuse_scores
    monkeypatch.setattr(onnx_backend, "reuse_scores", lambda *args: real(*args) + 1.0)
    with pytest.raises(ProrankError, match="the reuse graphs score"):
        onnx_export._check_reuse_graphs(artifact, prompts, "w8a8", tiny_qwen2_onnx / "model.onnx")
