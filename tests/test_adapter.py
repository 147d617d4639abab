"""The low-rank difference adapter: a fine-tune stored as SVD factors of its deltas, merged back onto the base."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import ADAPTER_PAIRS, fine_tune  # noqa: E402

from prorank_edge.adapter import apply_adapter, make_adapter  # noqa: E402
from prorank_edge.errors import ProrankError  # noqa: E402
from prorank_edge.formats import ADAPTER_INFO_FILENAME  # noqa: E402
from prorank_edge.reranker import Reranker  # noqa: E402


def _weights(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()


def test_adapter_reproduces_a_low_rank_fine_tune(tiny_qwen2_dir, tmp_path):
    trained = fine_tune(tiny_qwen2_dir, tmp_path / "trained", delta_rank=4)
    info = make_adapter(tiny_qwen2_dir, trained, tmp_path / "adapter", rank=8)
    assert max(info["relative_error"].values()) < 1e-4  # rank 8 holds a rank-4 delta
    merged = apply_adapter(tiny_qwen2_dir, tmp_path / "adapter", tmp_path / "merged")

    expected, got, base = _weights(trained), _weights(merged), _weights(tiny_qwen2_dir)
    for name in expected:
        moved = (expected[name] - base[name]).abs().max()
        assert moved > 0
        # fp16 factors: the residual is a small fraction of how far the weight moved
        assert (got[name] - expected[name]).abs().max() < 2e-3 * max(1.0, float(moved) * 10)

    # fp32: the check is of the adapter's arithmetic (on a CPU with native bf16, "auto" would score in bf16)
    reference = Reranker(str(trained), backend="torch", device="cpu", dtype="float32").predict(ADAPTER_PAIRS)
    scores = Reranker(str(merged), backend="torch", device="cpu", dtype="float32").predict(ADAPTER_PAIRS)
    assert np.ptp(reference) > 1e-3
    np.testing.assert_allclose(scores, reference, atol=2e-3)


def test_a_smaller_rank_records_what_it_loses(tiny_qwen2_dir, tmp_path):
    trained = fine_tune(tiny_qwen2_dir, tmp_path / "trained", delta_rank=16)
    info = make_adapter(tiny_qwen2_dir, trained, tmp_path / "adapter", rank=2)
    assert json.loads((tmp_path / "adapter" / ADAPTER_INFO_FILENAME).read_text())["rank"] == 2
    two_d = {n: e for n, e in info["relative_error"].items() if n.endswith(("proj.weight", "embed_tokens.weight"))}
    assert min(two_d.values()) > 0.1  # rank 2 cannot hold a rank-16 delta
    small = (tmp_path / "adapter" / "adapter.safetensors").stat().st_size
    full = sum(f.stat().st_size for f in trained.glob("*.safetensors"))
    assert small < full / 4


def test_adapter_of_another_architecture_is_refused(tiny_qwen2_dir, tiny_llama_dir, tmp_path):
    with pytest.raises(ProrankError, match="not those of"):
        make_adapter(tiny_qwen2_dir, tiny_llama_dir, tmp_path / "adapter")
