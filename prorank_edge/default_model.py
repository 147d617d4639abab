"""Conversion of a GGUF causal LM into a plain transformers checkpoint (needs torch, transformers, gguf)."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

from .contract import ScoringContract


def convert_gguf_checkpoint(gguf_path: Path, output_dir: Path, contract: ScoringContract | None = None) -> None:
    """Dequantize `gguf_path` with transformers and save it as safetensors with its tokenizer and contract.

    A model loaded with `gguf_file=` cannot be saved as it is, so it is rebuilt from its config and state dict.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (contract or ScoringContract()).save(output_dir)


@contextmanager
def _quiet_transformers():
    """No notices that say nothing to a user during the one-off conversion: transformers' "default legacy
    behaviour" tokenizer warning and the per-tensor progress bar of its GGUF reader (the caller prints one
    "converting ... once" line instead)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_reader
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    progress = gguf_reader.tqdm
    logging.set_verbosity_error()
    gguf_reader.tqdm = functools.partial(progress, disable=True)
    try:
        yield
    finally:
        gguf_reader.tqdm = progress
        logging.set_verbosity(verbosity)
