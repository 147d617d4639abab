"""GPTQ rounding (export/gptq.py): values on the quantizer's own grid, and less output error than nearest rounding
where the inputs are correlated."""

from __future__ import annotations

import numpy as np

from prorank_edge.export.gptq import gptq_round


def correlated_inputs(rng, tokens=512, channels=48):
    mixing = rng.normal(size=(channels, channels)) * np.linspace(0.2, 3.0, channels)
    return rng.normal(size=(tokens, channels)) @ mixing


def test_values_stay_on_the_grid_the_quantizer_would_choose():
    rng = np.random.default_rng(0)
    x = correlated_inputs(rng)
    w = rng.normal(size=(48, 40)).astype(np.float32)
    rounded, _ = gptq_round(w, x.T @ x)
    scale = np.abs(w).max(0) / 127
    steps = rounded / scale
    assert np.allclose(steps, np.round(steps), atol=1e-3)
    assert np.abs(np.round(steps)).max() <= 127
    # every column keeps a step at +-127, so max|column| / 127 gives the quantizer this same scale
    assert np.allclose(np.abs(rounded).max(0) / 127, scale, rtol=1e-6)


def test_less_output_error_than_nearest_rounding():
    rng = np.random.default_rng(1)
    x = correlated_inputs(rng)
    w = rng.normal(size=(48, 40)).astype(np.float32)
    rounded, ratio = gptq_round(w, x.T @ x, levels=7)  # a coarse grid makes the difference large
    scale = np.abs(w).max(0) / 7
    nearest = np.clip(np.round(w / scale), -7, 7) * scale
    gptq_error = np.sum((x @ rounded - x @ w) ** 2)
    nearest_error = np.sum((x @ nearest - x @ w) ** 2)
    assert gptq_error < 0.8 * nearest_error
    assert abs(ratio - gptq_error / nearest_error) < 0.05


def test_channels_the_calibration_never_saw():
    rng = np.random.default_rng(2)
    x = correlated_inputs(rng, channels=16)
    x[:, 3] = 0.0  # e.g. a channel no calibration prompt excites
    w = rng.normal(size=(16, 8)).astype(np.float32)
    rounded, ratio = gptq_round(w, x.T @ x)
    assert np.isfinite(rounded).all() and np.isfinite(ratio) and ratio <= 1.0 + 1e-6
