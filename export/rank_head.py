"""A rank head that stock llama.cpp reads, for Qwen2 and Llama GGUF files.

llama.cpp reranks with pooling "rank" (`llama-server --reranking`, `/v1/rerank`). Its loader takes a classifier
head (`cls.output`) only for the architectures that declare one (Qwen3, the BERT family); a QWEN2 or LLAMA
file that carries one is refused outright ("done_getting_tensors: wrong number of tensors"; llama-cpp-python
0.3.36). Without a head, rank pooling hands back the first channel of the final normed hidden state at each
prompt's last token (the score llama-server returns), so the score is put there instead:

1. Every RMSNorm weight is folded into the matrices that read its output (q/k/v, gate/up, the LM head) and
   set to 1. An RMSNorm without weight commutes with any orthogonal map of the residual stream.
2. The residual stream is rotated by an orthogonal Q whose first column is the folded ProRank head
   d = g_final * (W["1"] - W["0"]), normalised: whatever reads the stream gets W Q, whatever writes to it
   (the token embedding, o_proj, down_proj) gets Q^T W. The model computes the same function.
3. The final norm's weight becomes [|d|, 1, ..., 1] and the LM head W g_final Q / that weight, so channel 0 of
   the normed output is |d| (d/|d|) . x = the ProRank score, and every logit is unchanged.

The LM head can no longer share the token embedding's matrix, so a tied checkpoint gains an output tensor
(SmolLM2-135M: 49,152 x 576). Q's other columns are random (fixed seed). A random rotation spreads the few huge
activation channels of the residual stream over all channels (QuaRot, Ashkboos et al., 2024), which was
expected to help llama.cpp's per-block activation rounding; measured on the built-in model it costs a little
instead (per-query Spearman vs torch fp32, q8_0 0.9864 -> 0.9835, q4_k_m 0.9455 -> 0.9317).
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import ProrankError

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# What reads the residual stream (through the norm named beside it) and what writes to it.
_READERS = {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj")}
_WRITERS = ("self_attn.o_proj", "mlp.down_proj")
ROTATION_SEED = 0


def head_rotation(head: np.ndarray, seed: int = ROTATION_SEED) -> np.ndarray:
    """An orthogonal float64 matrix whose first column is head / |head| and whose other columns are random."""
    head = np.asarray(head, dtype=np.float64)
    norm = np.linalg.norm(head)
    if not np.isfinite(norm) or norm == 0:
        raise ProrankError("the rank head W[positive] - W[negative] is zero or not finite: nothing to score with")
    basis = np.random.default_rng(seed).standard_normal((head.size, head.size))
    basis[:, 0] = head / norm
    q, r = np.linalg.qr(basis)
    q *= np.sign(np.diag(r))  # QR fixes each column up to sign; this keeps column 0 = +head/|head|
    return q


def rotate_for_rank_head(tensors: dict[str, np.ndarray], config: dict, positive_id: int, negative_id: int,
                         seed: int = ROTATION_SEED) -> dict[str, np.ndarray]:
    """The checkpoint's tensors (HF names, float32) rewritten as above; `lm_head.weight` is always present.

    The result scores exactly like the input in exact arithmetic: same logits at every position, and channel
    0 of the final normed hidden state equals logit(positive) - logit(negative)."""
    n_layers = int(config["num_hidden_layers"])
    out = dict(tensors)
    lm_head = out.get("lm_head.weight", out["model.embed_tokens.weight"]).astype(np.float64)
    final_gain = out["model.norm.weight"].astype(np.float64)
    head = (lm_head[positive_id] - lm_head[negative_id]) * final_gain
    q = head_rotation(head, seed)

    out["model.embed_tokens.weight"] = out["model.embed_tokens.weight"].astype(np.float64) @ q
    for layer in range(n_layers):
        base = f"model.layers.{layer}."
        for norm, readers in _READERS.items():
            gain = out[base + norm + ".weight"].astype(np.float64)
            for reader in readers:
                out[base + reader + ".weight"] = (out[base + reader + ".weight"] * gain) @ q
            out[base + norm + ".weight"] = np.ones_like(gain)
        for writer in _WRITERS:
            out[base + writer + ".weight"] = q.T @ out[base + writer + ".weight"]
            if base + writer + ".bias" in out:
                out[base + writer + ".bias"] = q.T @ out[base + writer + ".bias"]
    final = np.ones_like(final_gain)
    final[0] = np.linalg.norm(head)
    out["model.norm.weight"] = final
    out["lm_head.weight"] = ((lm_head * final_gain) @ q) / final

    unknown = [name for name in out if not _known(name)]
    if unknown:  # a tensor this rotation does not know would silently stay in the old basis
        raise ProrankError(f"cannot rotate tensor {unknown[0]} for the rank head: it is not a Qwen2/Llama tensor "
                           "this exporter knows")
    return {name: np.asarray(tensor, dtype=np.float32) for name, tensor in out.items()}


def _known(name: str) -> bool:
    if name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight") or name.endswith("inv_freq"):
        return True
    match = _LAYER.match(name)
    if not match:
        return False
    rest = match.group(2)
    readers = {r for group in _READERS.values() for r in group}
    return (rest.removesuffix(".weight") in set(_READERS) | readers | set(_WRITERS)
            or rest.removesuffix(".bias") in readers | set(_WRITERS))


#: stands for the contract's separator in the rerank template; its embedding row is the separator's own
SEPARATOR_TOKEN = "<|prorank_separator|>"


def free_token_id(tokenizer: dict, vocab_size: int) -> int:
    """The first embedding row no token of tokenizer.json uses (Qwen2.5 pads 271 of them), else a new row."""
    used = set(tokenizer.get("model", {}).get("vocab", {}).values())
    used |= {added["id"] for added in tokenizer.get("added_tokens", [])}
    return next((i for i in range(vocab_size) if i not in used), vocab_size)


def copy_token_row(tensors: dict[str, np.ndarray], source: int, target: int) -> None:
    """Give token `target` the embedding and LM-head rows of `source` (appending a row when target is new)."""
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        matrix = tensors[name]
        if target == matrix.shape[0]:
            matrix = np.concatenate([matrix, matrix[source:source + 1]])
        else:
            matrix = matrix.copy()
            matrix[target] = matrix[source]
        tensors[name] = matrix
