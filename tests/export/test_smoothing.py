"""Channel smoothing before GGUF quantization (export/smoothing.py): exact in fp32, and it flattens outliers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_torch, rewrite_checkpoint, with_outlier_channel

pytestmark = requires_torch

PAIRS = [("what causes influenza", "Influenza is caused by influenza viruses."),
         ("what moves stock prices", "Share prices move with earnings expectations and interest rates."),
         ("capital of France", "Paris is the capital and most populous city of France."),
         ("sourdough", "Wild yeast and lactic acid bacteria leaven sourdough bread.")]


def _scores(model_dir: Path) -> np.ndarray:
    from prorank_edge.backends.torch_backend import TorchBackend

    backend = TorchBackend(model_dir, device="cpu", dtype="float32")
    try:
        return backend.score_batch(backend.prompts.build_pairs(PAIRS))
    finally:
        backend.close()


@pytest.mark.parametrize("model", ["tiny_qwen2_dir", "tiny_llama_dir"])
def test_smoothing_keeps_the_scores_and_removes_the_outlier(model, request, tmp_path):
    from prorank_edge.export.smoothing import calibration_maxima, smooth_tensor, smoothing_scales

    base = request.getfixturevalue(model)
    outlier = with_outlier_channel(base, tmp_path / "outlier")
    config = json.loads((outlier / "config.json").read_text())
    before, weight_maxima = calibration_maxima(outlier, PAIRS)
    q_in = before["model.layers.0.self_attn.q_proj"]
    assert q_in[5] > 20 * np.median(q_in)

    scales = smoothing_scales(before, weight_maxima, config, alpha=0.8)
    # Exact only if Qwen2's v_proj bias is divided with its rows and the o_proj columns follow grouped-query
    # attention (4 heads share 2 kv heads in both fixtures).
    smoothed = rewrite_checkpoint(outlier, tmp_path / "smoothed", lambda name, t: smooth_tensor(name, t, scales))
    reference, got = _scores(outlier), _scores(smoothed)
    assert np.ptp(reference) > 0.03  # the 4 scores differ, so a wrong scale would show
    np.testing.assert_allclose(got, reference, atol=1e-4)

    after, _ = calibration_maxima(smoothed, PAIRS)
    for name in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"):
        x = after[f"model.layers.0.{name}"]
        ratio_before = before[f"model.layers.0.{name}"].max() / np.median(before[f"model.layers.0.{name}"])
        assert x.max() / np.median(x) <= ratio_before + 1e-6, name
    assert after["model.layers.0.self_attn.q_proj"].max() / np.median(after["model.layers.0.self_attn.q_proj"]) \
        < 0.3 * q_in.max() / np.median(q_in)


def test_smooth_tensor_leaves_other_tensors_alone():
    from prorank_edge.export.smoothing import smooth_tensor

    w = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    scales = {"a": (np.array([2.0, 4.0], np.float32), np.array([1.0, 10.0, 100.0], np.float32)),
              "n": (np.array([2.0, 4.0], np.float32), None)}
    np.testing.assert_allclose(smooth_tensor("a", w, scales), [[0.5, 10, 150], [1, 12.5, 150]])
    np.testing.assert_allclose(smooth_tensor("n", np.array([2.0, 8.0], np.float32), scales), [1, 2])
    assert smooth_tensor("b", w, scales) is w
