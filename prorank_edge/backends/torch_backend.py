"""The torch reference backend: a causal LM body, its last position, and the two label rows of its LM head.

Only the final position's hidden state meets the head, and the head is folded into one fp32 row
(W[positive] - W[negative]), so no [batch, seq, vocab] logits are ever made (151,936 columns for Qwen2.5).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..contract import ScoringContract, left_pad, position_ids, right_pad
from ..devices import cpu_has_native_bf16, parse_device
from ..errors import ContractError, ProrankError
from .base import CPU_CALL_COST_TOKENS, ScoringBackend

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    parsed = parse_device(device)
    if parsed.kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if parsed.kind == "cuda" and not torch.cuda.is_available():
        raise ProrankError(f"device {device!r} was asked for, but torch sees no CUDA GPU here")
    return torch.device(parsed.kind, parsed.index) if parsed.index is not None else torch.device(parsed.kind)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if dtype not in _DTYPES:
        raise ProrankError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def folded_score_head(model, positive_token_id: int, negative_token_id: int,
                      trainable: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(W[pos] - W[neg], b[pos] - b[neg]) of the LM head in fp32: the whole score head in one row.

    Inference takes it detached; training (`trainable`) keeps it in the graph, so the two label rows of the
    head learn too (an untied head would otherwise stay frozen).
    """
    head = model.get_output_embeddings()
    if head is None:
        raise ContractError("this model has no LM head, so it cannot score logit('1') - logit('0')")
    weight = head.weight if trainable else head.weight.detach()
    if max(positive_token_id, negative_token_id) >= weight.shape[0]:
        raise ContractError(
            f"the label token ids ({positive_token_id}, {negative_token_id}) are outside the model's "
            f"vocabulary of {weight.shape[0]}"
        )
    row = (weight[positive_token_id].float() - weight[negative_token_id].float()).contiguous()
    bias = getattr(head, "bias", None)
    offset = (bias[positive_token_id].float() - bias[negative_token_id].float()) if bias is not None \
        else torch.zeros(())
    return row, offset if trainable else offset.detach()


def last_position_scores(body, head_row: torch.Tensor, head_offset: torch.Tensor, input_ids, attention_mask,
                         positions) -> torch.Tensor:
    """Scores from the decoder body: final hidden state at the last position dotted with the folded head.

    Shared by inference and training (stage 2 backpropagates through it), so both score identically.
    """
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                  use_cache=False).last_hidden_state[:, -1, :]
    return hidden.float() @ head_row.to(hidden.device) + head_offset.to(hidden.device)


def prefix_key_values(body, prefix_ids) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Per-layer (keys, values) of one prompt prefix [1, P], positions 0..P-1."""
    return cache_layers(body(input_ids=prefix_ids, use_cache=True).past_key_values)


def cache_layers(cache) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """(keys, values) per layer of a transformers cache (a Cache with `.layers`, or the legacy tuple)."""
    return tuple((layer.keys, layer.values) for layer in cache.layers) if hasattr(cache, "layers") \
        else tuple((k, v) for k, v in cache)


def suffix_scores(body, head_row: torch.Tensor, head_offset: torch.Tensor, prefix_kv, suffix_ids, suffix_lengths
                  ) -> torch.Tensor:
    """Scores of prefix + suffix prompts, computing only the suffixes against the prefix's keys/values.

    suffix_ids [batch, S] are right-padded: every suffix starts at position P (the prefix length), so positions
    are exact without per-row shifts, and the pads after a row's last token are never seen by it (causal) and
    masked for the rest. The prefix keys/values are expanded (a view, no copy) across the batch.
    """
    from transformers import DynamicCache

    batch, width = suffix_ids.shape
    prefix_length = prefix_kv[0][0].shape[-2]
    device = suffix_ids.device
    cache = DynamicCache()
    for layer, (keys, values) in enumerate(prefix_kv):
        cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), layer)
    steps = torch.arange(width, device=device)
    real = (steps.unsqueeze(0) < suffix_lengths.unsqueeze(1)).long()
    mask = torch.cat([torch.ones(batch, prefix_length, dtype=torch.long, device=device), real], dim=1)
    positions = (prefix_length + steps).unsqueeze(0).expand(batch, -1)
    hidden = body(input_ids=suffix_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                  cache_position=prefix_length + steps, use_cache=True).last_hidden_state
    last = hidden[torch.arange(batch, device=device), suffix_lengths - 1]
    return last.float() @ head_row.to(device) + head_offset.to(device)


def model_body(model):
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None:
        raise ContractError(f"{type(model).__name__} has no decoder body to score with")
    return body


class TorchBackend(ScoringBackend):
    name = "torch"
    reuses_prefix = True
    padding_call_cost = CPU_CALL_COST_TOKENS  # rows are padded to the batch's longest; unset on a GPU

    def __init__(self, model_path: str | Path, contract: ScoringContract | None = None, max_length: int | None = None,
                 device: str = "auto", dtype: str = "auto", threads: int | None = None, model=None, tokenizer=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model_path = str(model_path)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if contract is None:
            contract = ScoringContract.load(self.model_path) if os.path.isdir(self.model_path) else ScoringContract()
        super().__init__(_backend_tokenizer(tokenizer), contract, max_length)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.body = model_body(self.model)
        self.head_row, self.head_offset = folded_score_head(
            self.model, self.prompts.positive_token_id, self.prompts.negative_token_id
        )
        self.head_row = self.head_row.to(self.device)
        self.head_offset = self.head_offset.to(self.device)
        # Bound activation memory on the CPU; a GPU takes bigger batches.
        self.max_batch_tokens = 1 << 18 if self.device.type == "cuda" else 1 << 15
        if self.device.type == "cuda":
            self.padding_call_cost = None
        # The last prefix's keys/values: a query's candidates fill several batches, its prefix runs once.
        self._prefix: tuple[tuple[int, ...], tuple] | None = None

    @torch.inference_mode()
    def score_batch(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        ids, mask = left_pad(token_ids)
        positions = position_ids(mask)
        to = lambda a: torch.from_numpy(a).to(self.device)  # noqa: E731
        scores = last_position_scores(self.body, self.head_row, self.head_offset, to(ids), to(mask), to(positions))
        total = int(mask.sum())
        self.count_tokens(total, total)
        return scores.cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def score_with_prefix(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]]) -> np.ndarray:
        key = tuple(prefix)
        computed = sum(len(s) for s in suffixes)
        if self._prefix is None or self._prefix[0] != key:
            ids = torch.tensor([key], dtype=torch.long, device=self.device)
            self._prefix = (key, prefix_key_values(self.body, ids))
            computed += len(key)
        ids, mask = right_pad(suffixes)
        lengths = mask.sum(axis=1)
        scores = suffix_scores(self.body, self.head_row, self.head_offset, self._prefix[1],
                               torch.from_numpy(ids).to(self.device), torch.from_numpy(lengths).to(self.device))
        self.count_tokens(len(key) * len(suffixes) + int(lengths.sum()), computed)
        return scores.cpu().numpy().astype(np.float32)

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "threads": torch.get_num_threads(), "model": self.model_path}

    def close(self) -> None:
        self.model = self.body = self._prefix = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _backend_tokenizer(tokenizer):
    """The `tokenizers.Tokenizer` behind a transformers fast tokenizer (or the object itself)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend
    if hasattr(tokenizer, "encode_batch"):
        return tokenizer
    raise ContractError("a fast (Rust `tokenizers`) tokenizer is needed; this model only has a slow one")
