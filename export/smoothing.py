"""SmoothQuant-style channel smoothing for llama.cpp's quantized GGUF levels.

llama.cpp's CPU kernels quantize a matmul's input activations too (q8_0 weights take q8_0 activations, blocks
of 32 sharing one scale; K-quants take q8_K, blocks of 256). A few input channels carry activations 10-100x
the median, so every block holding one of them loses most of its resolution. On SmolLM2-135M (100 SciFact
pairs, simulated in torch) q8_0 weights alone keep Spearman 0.9985 against fp32; q8_0 activations on top
drop it to 0.987 (llama.cpp's q8_0 file: 0.9885). Smoothing (Xiao et al., 2023, "SmoothQuant") divides each
input channel j of a matmul by s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha) and multiplies the weight's
column j by s_j: the product is unchanged, and the activation outliers move into the weights, which are
quantized offline per block.

The division is folded into whatever produces the input, so nothing is added to the graph:
- q/k/v projections: the input RMSNorm's weight;   gate/up projections: the post-attention RMSNorm's weight;
- down projection: the rows of up_proj (SwiGLU's output is act(gate) * up, linear in up);
- o projection: the rows (and bias) of v_proj (attention mixes positions, not channels; with grouped-query
  attention one v channel feeds one input channel of o in every query head of its group, so they share s).
In exact arithmetic the model is unchanged; `smooth_tensor` applies the scales while the f16 GGUF is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: the migration strength by quant level (see `smoothing_scales`), picked by measurement on SmolLM2-135M,
#: Spearman vs fp32. q8_0, 100 SciFact pairs simulated in torch: 0.987 unsmoothed, 0.993 at 0.5, 0.996 at 0.8,
#: 0.994 at 0.9 (llama.cpp's file: 0.9885 -> 0.9958 at 0.8). q4_k_m, llama.cpp on 40 pairs: 0.932 unsmoothed,
#: 0.978 at 0.5, 0.945 at 0.8 (4-bit weights take less of the activations' range).
DEFAULT_ALPHAS = {"q8_0": 0.8, "q4_k_m": 0.5}

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def calibration_maxima(model_dir: str | Path, pairs: Sequence[tuple[str, str]], max_length: int | None = None,
                       batch_size: int = 8) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What smoothing needs, from one torch fp32 load of the checkpoint:

    - per-channel max |input| of every decoder linear layer over the contract prompts of `pairs`, by module
      name ("model.layers.0.self_attn.q_proj", ...);
    - max |W[:, j]| of each input column j of the same layers' weights, by tensor name ("...q_proj.weight").
    """
    import torch

    from ..backends.torch_backend import TorchBackend

    backend = TorchBackend(model_dir, max_length=max_length, device="cpu", dtype="float32")
    maxima: dict[str, torch.Tensor] = {}
    weight_maxima: dict[str, np.ndarray] = {}
    hooks = []

    def record(name):
        def hook(module, inputs):
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
            maxima[name] = torch.maximum(maxima[name], x) if name in maxima else x
        return hook

    try:
        for name, module in backend.model.named_modules():
            if isinstance(module, torch.nn.Linear) and _LAYER.match(name):
                hooks.append(module.register_forward_pre_hook(record(name)))
                weight_maxima[name + ".weight"] = module.weight.detach().abs().amax(0).float().numpy()
        token_ids = backend.prompts.build_pairs(pairs)
        for start in range(0, len(token_ids), batch_size):
            backend.score_batch(token_ids[start:start + batch_size])
    finally:
        for hook in hooks:
            hook.remove()
        backend.close()
    # Left padding feeds pad positions through the layers too; they are real inputs of the kernels as well.
    return {name: value.float().numpy() for name, value in maxima.items()}, weight_maxima


def channel_factor(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha) per input channel j, bounded away from 0 and infinity."""
    s = np.maximum(x_max, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def smoothing_scales(maxima: dict[str, np.ndarray], weight_maxima: dict[str, np.ndarray], config: dict,
                     alpha: float) -> dict[str, tuple[np.ndarray | None, np.ndarray | None]]:
    """Tensor name -> (divisor of its rows (or of a 1-D weight), multiplier of its columns).

    maxima, weight_maxima: from `calibration_maxima`.
    alpha 0 leaves activations alone; 1 moves all of their range into the weights.
    """
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    layers = int(config["num_hidden_layers"])
    rows: dict[str, np.ndarray] = {}
    cols: dict[str, np.ndarray] = {}

    def column_max(*names: str) -> np.ndarray:
        return np.max([weight_maxima[n] for n in names], axis=0)

    for i in range(layers):
        p = f"model.layers.{i}."
        qkv = [p + f"self_attn.{n}_proj.weight" for n in "qkv"]
        s = channel_factor(maxima[p + "self_attn.q_proj"], column_max(*qkv), alpha)
        rows[p + "input_layernorm.weight"] = s
        for n in qkv:
            cols[n] = s
        gate_up = [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]
        s = channel_factor(maxima[p + "mlp.gate_proj"], column_max(*gate_up), alpha)
        rows[p + "post_attention_layernorm.weight"] = s
        for n in gate_up:
            cols[n] = s
        s = channel_factor(maxima[p + "mlp.down_proj"], column_max(p + "mlp.down_proj.weight"), alpha)
        rows[p + "mlp.up_proj.weight"] = s
        cols[p + "mlp.down_proj.weight"] = s
        # o's input channel (head h, dim d) reads v channel (kv head h // group, dim d): one factor per v channel.
        o = p + "self_attn.o_proj.weight"
        head_dim = weight_maxima[o].shape[0] // heads
        group = heads // kv_heads
        x_v = maxima[p + "self_attn.o_proj"].reshape(kv_heads, group, head_dim).max(axis=1)
        w_v = weight_maxima[o].reshape(kv_heads, group, head_dim).max(axis=1)
        s_v = channel_factor(x_v, w_v, alpha).reshape(-1)
        rows[p + "self_attn.v_proj.weight"] = s_v
        rows[p + "self_attn.v_proj.bias"] = s_v
        cols[o] = np.broadcast_to(s_v.reshape(kv_heads, 1, head_dim), (kv_heads, group, head_dim)).reshape(-1)
    return {name: (rows.get(name), cols.get(name)) for name in set(rows) | set(cols)}


def smooth_tensor(name: str, tensor: np.ndarray, scales: dict) -> np.ndarray:
    """The tensor with its smoothing applied (unchanged when it has none)."""
    if name not in scales:
        return tensor
    row_divisor, column_multiplier = scales[name]
    out = tensor.astype(np.float32, copy=True)
    if row_divisor is not None:
        out /= row_divisor if out.ndim == 1 else row_divisor[:, None]
    if column_multiplier is not None:
        out *= column_multiplier[None, :]
    return out
