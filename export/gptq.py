"""GPTQ rounding (Frantar et al. 2022) of a weight onto a fixed symmetric per-output-channel int8 grid.

Rounding each weight to the nearest step ignores that the errors of one output add up over the input channels
the activations move together. GPTQ rounds the input channels (rows of W [K, N]) one at a time and moves the
rows not yet rounded to cancel what the rounded one got wrong, weighted by the calibration activations'
second moments H = sum x x^T. The grid is the one the quantizer will choose anyway (scale = max |W[:, n]| /
levels per output column, every column keeping one step at +-levels), so the quantizer that follows (NNCF)
finds the values already on its grid and stores them unchanged.

Measured on the built-in model's smoothed int8 weights (alpha 0.95, 64 SciFact train prompts): output error
x^T (Q - W) H (Q - W) x at 0.44 of nearest rounding's, averaged over the 180 matrices.
"""

from __future__ import annotations

import numpy as np

#: H's diagonal is raised by this share of its mean before inversion (GPTQ's dampening: channels the
#: calibration never excites would otherwise make H singular)
DAMPENING = 0.01


def gptq_round(weight: np.ndarray, xtx: np.ndarray, levels: int = 127) -> tuple[np.ndarray, float]:
    """(W rounded onto its per-column grid max|W[:, n]| / levels, output error of that rounding over nearest
    rounding's, both weighted by xtx). weight: [K, N] (input channels x outputs); xtx: [K, K]."""
    w = np.asarray(weight, dtype=np.float64)
    h = np.array(xtx, dtype=np.float64)
    scale = np.maximum(np.abs(w).max(0), 1e-12) / levels
    dead = np.flatnonzero(np.diag(h) <= 0)  # channels the calibration never saw: nothing to compensate
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += DAMPENING * float(np.mean(np.diag(h)))
    # Upper Cholesky factor of H^-1: row i holds how the rows after i absorb row i's error.
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    pending = w.copy()
    rounded = np.empty_like(w)
    for i in range(w.shape[0]):
        rounded[i] = np.clip(np.round(pending[i] / scale), -levels, levels) * scale
        error = (pending[i] - rounded[i]) / u[i, i]
        pending[i + 1:] -= np.outer(u[i, i + 1:], error)
    # A column whose largest weight was moved below the top step would get a smaller scale from the
    # quantizer, which would then round everything again: put that weight back on +-levels.
    short = np.abs(np.round(rounded / scale)).max(0) < levels
    if short.any():
        columns = np.flatnonzero(short)
        rows = np.abs(w[:, columns]).argmax(0)
        rounded[rows, columns] = np.sign(w[rows, columns]) * levels * scale[columns]
    nearest = np.clip(np.round(w / scale), -levels, levels) * scale

    def output_error(q):
        d = q - w
        return float(np.sum(d * (h @ d)))

    return rounded.astype(np.float32), output_error(rounded) / max(output_error(nearest), 1e-30)
