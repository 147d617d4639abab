"""The low-rank difference adapter: a fine-tune stored as SVD factors of its deltas, merged back onto the base."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from prorank_edge.adapter import apply_adapter, make_adapter  # noqa: E402
from prorank_edge.errors import ProrankError  # noqa: E402
from prorank_edge.formats import ADAPTER_INFO_FILENAME  # noqa: E402
from prorank_edge.reranker import Reranker  # noqa: E402

PAIRS = [("what causes influenza", "Influenza is caused by influenza viruses."),
         ("what causes influenza", "Paris is the capital of France."),
         ("tallest mountain", "Mount Everest is the highest mountain above sea level."),
         ("tallest mountain", "The Nile is a long river.")]


def _fine_tune(base_dir, out_dir, delta_rank: int):
    """A copy of the base whose 2-D weights moved by a rank-`delta_rank` delta and whose norms moved too."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(base_dir, out_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                left = torch.randn(weight.shape[0], delta_rank, generator=generator)
                right = torch.randn(delta_rank, weight.shape[1], generator=generator)
                weight.add_(0.02 * left @ right / delta_rank)
            else:
                weight.add_(0.05 * torch.randn(weight.shape, generator=generator))
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def _weights(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()


def test_adapter_reproduces_a_low_rank_fine_tune(tiny_qwen2_dir, tmp_path):
    trained = _fine_tune(tiny_qwen2_dir, tmp_path / "trained", delta_rank=4)
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
    reference = Reranker(str(trained), backend="torch", device="cpu", dtype="float32").predict(PAIRS)
    scores = Reranker(str(merged), backend="torch", device="cpu", dtype="float32").predict(PAIRS)
    assert np.ptp(reference) > 1e-3
    np.testing.assert_allclose(scores, reference, atol=2e-3)


def test_a_smaller_rank_records_what_it_loses(tiny_qwen2_dir, tmp_path):
    trained = _fine_tune(tiny_qwen2_dir, tmp_path / "trained", delta_rank=16)
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


def test_the_default_model_is_smollm2_plus_the_packaged_adapter(smollm2_dir):
    from prorank_edge.contract import ScoringContract
    from prorank_edge.models import DEFAULT_ADAPTER_DIR, has_default_adapter, resolve_model

    if not has_default_adapter():
        pytest.fail(f"the packaged default adapter is missing from {DEFAULT_ADAPTER_DIR}")
    base, default = resolve_model("smollm2"), resolve_model("default")
    assert base.path == smollm2_dir and default.kind == "torch" and default.path != base.path
    contract = ScoringContract.load(default.path)
    info = json.loads((DEFAULT_ADAPTER_DIR / ADAPTER_INFO_FILENAME).read_text())
    # The fusion weight was tuned on held-out training queries and travels in the contract.
    assert contract.extra["fusion_weight"] == info["dev"]["fusion_weight"]
    assert info["dev"]["split"] == "train"
    pairs = PAIRS[:2]
    base_scores = Reranker(str(base.path), backend="torch", device="cpu").predict(pairs)
    default_scores = Reranker(backend="torch", device="cpu").predict(pairs)
    assert np.abs(default_scores - base_scores).max() > 0.1


EDGE_SCRIPT = r"""
import json, sys
sys.modules["torch"] = sys.modules["transformers"] = None  # an edge box: the gguf extra only
from prorank_edge.models import resolve_model
from prorank_edge.reranker import Reranker
source = resolve_model("default")
with Reranker() as reranker:
    scores = reranker.predict(json.loads(sys.argv[1]))
print(json.dumps({"kind": source.kind, "path": str(source.path), "scores": [float(s) for s in scores]}))
"""


def test_the_default_model_without_torch_is_the_same_reranker_on_llama_cpp(smollm2_dir, tmp_path):
    """Without torch the packaged adapter is merged into an f16 GGUF with numpy; it must score like torch."""
    import os
    import subprocess
    import sys

    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    pairs = PAIRS + [("IL-6 (p<0.05) rose 3.5-fold?", "Interleukin 6 rose 3.5-fold in 12 of 40 patients (p<0.05).")]
    with Reranker(backend="torch", device="cpu", dtype="float32") as reference:
        expected = reference.predict(pairs)
    env = dict(os.environ, PRORANK_EDGE_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", EDGE_SCRIPT, json.dumps(pairs)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["kind"] == "gguf" and "applying the default reranker's adapter" in done.stderr
    got = np.array(result["scores"])
    # f16 weights against fp32: the drift of an f16 export, far below the adapter's own effect (> 0.1).
    assert np.abs(got - expected).max() < 0.05, (got, expected)
    assert list(np.argsort(got)) == list(np.argsort(expected))


def test_an_adapter_for_another_model_is_refused_by_the_gguf_merge(tiny_llama_dir, smollm2_dir, tmp_path):
    pytest.importorskip("gguf")
    from prorank_edge.gguf_adapter import apply_adapter_to_gguf
    from prorank_edge.models import smollm2_gguf_path

    adapter = tmp_path / "adapter"
    make_adapter(tiny_llama_dir, _fine_tune(tiny_llama_dir, tmp_path / "tuned", 2), adapter, rank=2)
    output = tmp_path / "out.gguf"
    with pytest.raises(ProrankError, match="shape"):
        apply_adapter_to_gguf(smollm2_gguf_path(), adapter, output)
    assert not output.exists() and not list(tmp_path.glob(".out.gguf*"))
