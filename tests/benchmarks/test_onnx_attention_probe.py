"""benchmarks/onnx_attention_probe.py: the eager attention ops and onnxruntime's MultiHeadAttention it times
against them compute the same thing (else its timing would compare two different computations)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import REPO

ort = pytest.importorskip("onnxruntime")


def test_eager_and_fused_attention_agree_on_a_causal_padded_mask():
    spec = importlib.util.spec_from_file_location("attention_probe", REPO / "benchmarks" / "onnx_attention_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    batch, heads, tokens, head_size = 2, 3, 12, 8
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((batch, heads, tokens, head_size), dtype=np.float32) for n in "qkv"}
    mask = np.triu(np.full((tokens, tokens), np.finfo(np.float32).min, np.float32), 1)[None, None].repeat(batch, 0)
    mask[1, :, :, :3] = np.finfo(np.float32).min  # the second prompt is left-padded by 3
    feeds["mask"] = mask
    outputs = [ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
               for model in probe.graphs(batch, heads, tokens, head_size).values()]
    assert outputs[0].shape == (batch, tokens, heads * head_size)
    np.testing.assert_allclose(outputs[0][:, 3:], outputs[1][:, 3:], rtol=1e-4, atol=1e-5)
    # and it is attention: the first token attends to itself alone, so its output is its own value row
    np.testing.assert_allclose(outputs[0][0, 0], feeds["v"][0, :, 0].reshape(-1), rtol=1e-5, atol=1e-6)
