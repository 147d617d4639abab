"""Export a ProRank causal LM to an ONNX scoring artifact: token ids in, one score per row out.

The graph holds only what scoring needs: the decoder body, its last position, and the LM head folded into
one fp32 row (W[positive] - W[negative]), so it never computes [batch, seq, vocab] logits. The artifact is a
folder that the onnx backend reads without torch or transformers:

    model.onnx               inputs input_ids, attention_mask [batch, seq] int64 -> output score [batch] float32
    prefix.onnx              prefix_ids [1, P] -> present_keys, present_values [layers, 1, kv_heads, P, head_dim]
    suffix.onnx              past_keys, past_values [layers, batch, kv_heads, P, head_dim], suffix_ids and
                             suffix_mask [batch, S] (right padded) -> score [batch]: prefix reuse
    tokenizer.json           the checkpoint's `tokenizers` tokenizer
    prorank_contract.json    the prompt contract, label token ids filled in
    export_info.json         source, quantization, opset, file sizes, versions

prefix.onnx and suffix.onnx hold no weights of their own: their initializers point (as ONNX external data) at
the identical tensors inside model.onnx, so the reuse graphs add kilobytes, not a second copy of the model.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..contract import PromptBuilder, ScoringContract
from ..errors import ContractError, ProrankError
from ..formats import (
    ONNX_BLOCK_SIZE,
    ONNX_EXPORT_INFO_FILENAME,
    ONNX_EXTERNAL_DATA_FILENAME,
    ONNX_INPUT_NAMES,
    ONNX_MODEL_FILENAME,
    ONNX_OUTPUT_NAME,
    ONNX_PREFIX_INPUT_NAME,
    ONNX_PREFIX_MODEL_FILENAME,
    ONNX_PREFIX_OUTPUT_NAMES,
    ONNX_SUFFIX_INPUT_NAMES,
    ONNX_SUFFIX_MODEL_FILENAME,
    QUANTS,
    TOKENIZER_FILENAME,
)
from ..staging import staged

# The highest opset torch's TorchScript exporter writes.
DEFAULT_OPSET = 20
# protobuf cannot serialize a message over 2 GiB; leave room for the graph itself.
_PROTOBUF_LIMIT = 2**31 - 64 * 2**20
# Reuse-graph tensors at least this big are read from model.onnx's bytes; smaller ones stay inline.
_SHARE_MIN_BYTES = 1024
# Largest |reuse-graph score - model.onnx score| the export accepts on its test prompts, per level. Both sides
# run the same weights; measured: under 3e-7 at fp32, int8 and int4, 0 at fp16 (CPU) on the tiny test models,
# under 8e-6 on SmolLM2-135M; fp16 gets room for rounding that lands differently on another provider. w8a8
# rounds activations at run time, so a value a summation order puts on the other side of a rounding step
# moves by a whole int8 step: 6.5e-3 on SmolLM2-135M's export prompts.
_REUSE_TOLERANCE = {"fp32": 1e-3, "int8": 1e-3, "w8a8": 3e-2, "int4": 1e-3, "fp16": 3e-2}


def export_onnx(model_dir: str | Path, output_dir: str | Path, quant: str = "fp32", opset: int = DEFAULT_OPSET,
                max_length: int | None = None, overwrite: bool = False) -> dict:
    """Export the checkpoint in `model_dir` to an ONNX scoring artifact folder; returns its export_info.

    quant: "fp32"; "fp16" (for GPUs; inputs, output and score head stay fp32); "int8" (8-bit weight-only
    MatMulNBits, symmetric blocks of 32); "w8a8" (8-bit weights and per-token 8-bit activations on integer
    GEMMs, smoothed and calibrated on the built-in pairs: export/onnx_int8.py); "int4" (4-bit weight-only
    MatMulNBits, min-max blocks of 32 with float zero points, and the embedding table as 4-bit
    GatherBlockQuantized). Activations stay fp32 except in w8a8.
    max_length: stored in the artifact's contract (default: the checkpoint's contract).
    The folder is built beside `output_dir` and renamed into place only when complete.
    """
    _check_quant(quant)
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not (model_dir / "config.json").is_file():
        raise ProrankError(f"{model_dir}: not a transformers checkpoint (no config.json)")
    _refuse_existing(output_dir, overwrite)

    import torch

    started = time.perf_counter()
    tokenizer = _load_tokenizer(model_dir)
    prompts = PromptBuilder(tokenizer.backend_tokenizer, ScoringContract.load(model_dir), max_length=max_length)
    model = _load_causal_lm(model_dir)
    graph = score_graph(model, prompts.positive_token_id, prompts.negative_token_id)
    prefix_graph, suffix_graph = reuse_graphs(model, prompts.positive_token_id, prompts.negative_token_id)

    with _staging_folder(output_dir, overwrite) as staging:
        traced = staging / "fp32"
        fp32_path = traced / "model" / ONNX_MODEL_FILENAME
        reuse_fp32 = {name: traced / name / name for name in REUSE_FILENAMES}
        for path in (fp32_path, *reuse_fp32.values()):
            path.parent.mkdir(parents=True)
        sample = _sample_inputs(prompts)
        prefix_ids, suffix_sample = _reuse_sample(prompts)
        with torch.inference_mode():
            _trace_to_onnx(graph, fp32_path, opset, sample)
            expected = graph(*(torch.from_numpy(sample[name]) for name in ONNX_INPUT_NAMES)).numpy()
            _trace_to_onnx(prefix_graph, reuse_fp32[ONNX_PREFIX_MODEL_FILENAME], opset, prefix_ids,
                           inputs=(ONNX_PREFIX_INPUT_NAME,), outputs=ONNX_PREFIX_OUTPUT_NAMES, axes=_PREFIX_AXES)
            # The suffix graph is traced on the prefix graph's own keys/values, one copy per suffix row.
            rows = len(next(iter(suffix_sample.values())))
            past = [kv.expand(-1, rows, -1, -1, -1).contiguous().numpy()
                    for kv in prefix_graph(torch.from_numpy(prefix_ids[ONNX_PREFIX_INPUT_NAME]))]
            _trace_to_onnx(suffix_graph, reuse_fp32[ONNX_SUFFIX_MODEL_FILENAME], opset,
                           {**dict(zip(ONNX_SUFFIX_INPUT_NAMES[:2], past)), **suffix_sample},
                           inputs=ONNX_SUFFIX_INPUT_NAMES, axes=_SUFFIX_AXES)
        for path in (fp32_path, *reuse_fp32.values()):
            _consolidate_external_data(path)
        fp32_bytes = _onnx_bytes(fp32_path)
        factors = _w8a8_factors(fp32_path, prompts) if quant == "w8a8" else None
        if quant == "int4":
            from .onnx_int4 import adapter_parts

            factors = adapter_parts(model_dir)
        model_path = _write_model(fp32_path, staging, quant, factors=factors)
        shared = _write_reuse_graphs(reuse_fp32, staging, quant, factors)
        _check_graph_scores(model_path, sample, expected if quant == "fp32" else None)
        _check_reuse_graphs(staging, prompts, quant, fp32_path if quant == "w8a8" else None)
        shutil.rmtree(traced)

        _write_tokenizer(model_dir, tokenizer, staging)
        _check_tokenizer_agrees(staging / TOKENIZER_FILENAME, prompts)
        prompts.contract.save(staging)
        info = {
            "format": "onnx",
            "source_model": str(model_dir.resolve()),
            "architecture": (model.config.architectures or [type(model).__name__])[0],
            "parameters": sum(p.numel() for p in model.parameters()),
            "quant": quant,
            "opset": opset,
            "inputs": list(ONNX_INPUT_NAMES),
            "output": ONNX_OUTPUT_NAME,
            "positive_token_id": prompts.positive_token_id,
            "negative_token_id": prompts.negative_token_id,
            "max_length": prompts.max_length,
            "fp32_model_bytes": fp32_bytes,
            "model_bytes": _onnx_bytes(model_path),
            **_reuse_info(staging, shared), **_quant_info(quant, factors),
            "export_seconds": round(time.perf_counter() - started, 1),
            "prorank_edge_version": __version__,
            "torch_version": torch.__version__,
            "onnx_version": _version("onnx"),
            "onnxruntime_version": _version("onnxruntime"),
        }
        _write_export_info(staging, info)
    info["path"] = str(output_dir)
    return info


def quantize_onnx(artifact_dir: str | Path, output_dir: str | Path, quant: str, overwrite: bool = False) -> dict:
    """A quantized (or fp16) artifact made from an fp32 one, without torch and without tracing again.

    Same result as export_onnx(..., quant=quant) from the checkpoint, at the cost of the quantizer only.
    """
    _check_quant(quant)
    artifact_dir, output_dir = Path(artifact_dir), Path(output_dir)
    source_model = artifact_dir / ONNX_MODEL_FILENAME
    info_path = artifact_dir / ONNX_EXPORT_INFO_FILENAME
    if not source_model.is_file() or not info_path.is_file():
        raise ProrankError(f"{artifact_dir}: not an ONNX artifact made by export_onnx (no {ONNX_MODEL_FILENAME} or "
                           f"{ONNX_EXPORT_INFO_FILENAME})")
    source_info = json.loads(info_path.read_text(encoding="utf-8"))
    if source_info.get("quant") != "fp32":
        raise ProrankError(f"{artifact_dir}: quantize from an fp32 artifact, not a {source_info.get('quant')} one")
    _refuse_existing(output_dir, overwrite)

    from tokenizers import Tokenizer

    started = time.perf_counter()
    contract = ScoringContract.load(artifact_dir)
    prompts = PromptBuilder(Tokenizer.from_file(str(artifact_dir / TOKENIZER_FILENAME)), contract)
    # An artifact from before prefix reuse has no reuse graphs, and they cannot be made without tracing.
    reuse_sources = {name: artifact_dir / name for name in REUSE_FILENAMES}
    if not all(path.is_file() for path in reuse_sources.values()):
        reuse_sources = {}
    with _staging_folder(output_dir, overwrite) as staging:
        factors = _w8a8_factors(source_model, prompts) if quant == "w8a8" else None
        model_path = _write_model(source_model, staging, quant, copy=True, factors=factors)
        # model.onnx first: the reuse graphs read their weights from it, so a broken one fails them too.
        _check_graph_scores(model_path, _sample_inputs(prompts), None)
        shared = _write_reuse_graphs(reuse_sources, staging, quant, factors) if reuse_sources else None
        if reuse_sources:
            _check_reuse_graphs(staging, prompts, quant, source_model if quant == "w8a8" else None)
        shutil.copyfile(artifact_dir / TOKENIZER_FILENAME, staging / TOKENIZER_FILENAME)
        prompts.contract.save(staging)
        source_info = {k: v for k, v in source_info.items() if k not in _REUSE_INFO_KEYS}
        info = dict(source_info, quant=quant, source_artifact=str(artifact_dir.resolve()),
                    model_bytes=_onnx_bytes(model_path), **_reuse_info(staging, shared), **_quant_info(quant, factors),
                    export_seconds=round(time.perf_counter() - started, 1),
                    prorank_edge_version=__version__, onnxruntime_version=_version("onnxruntime"))
        _write_export_info(staging, info)
    info["path"] = str(output_dir)
    return info


def _check_quant(quant: str) -> None:
    if quant not in QUANTS["onnx"]:
        raise ProrankError(f"unknown quantization {quant!r}; choose one of: {', '.join(QUANTS['onnx'])}")


def _refuse_existing(output_dir: Path, overwrite: bool) -> None:
    if (output_dir.exists() or output_dir.is_symlink()) and not overwrite:
        raise ProrankError(f"{output_dir} already exists; pass overwrite=True (--overwrite) to replace it")


def _write_model(fp32_path: Path, staging: Path, quant: str, copy: bool = False, factors: dict | None = None) -> Path:
    """staging/model.onnx in the asked-for precision, made from the fp32 graph at `fp32_path`."""
    target = staging / ONNX_MODEL_FILENAME
    if quant == "fp32":
        transfer = shutil.copyfile if copy else os.replace
        transfer(fp32_path, target)
        if (fp32_path.parent / ONNX_EXTERNAL_DATA_FILENAME).is_file():
            transfer(fp32_path.parent / ONNX_EXTERNAL_DATA_FILENAME, staging / ONNX_EXTERNAL_DATA_FILENAME)
    else:
        _convert(fp32_path, target, quant, factors)
    return target


def _convert(fp32_path: Path, target: Path, quant: str, factors: dict | None = None) -> None:
    """factors, the same for model.onnx and the reuse graphs: w8a8's channel factors (onnx_int8.channel_factors);
    for int4, the parts of the adapter the checkpoint was merged from (onnx_int4.adapter_parts)."""
    if quant == "int8":
        _quantize_int8(fp32_path, target)
    elif quant == "w8a8":
        from .onnx_int8 import quantize_int8

        _save_onnx(quantize_int8(_load_onnx(fp32_path), factors), target)
    elif quant == "int4":
        _quantize_int4(fp32_path, target, factors)
    else:
        _convert_fp16(fp32_path, target)


def _write_export_info(staging: Path, info: dict) -> None:
    info["files"] = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
    path = staging / ONNX_EXPORT_INFO_FILENAME
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    info["files"][ONNX_EXPORT_INFO_FILENAME] = path.stat().st_size


# ---- the scoring graph ----------------------------------------------------------------------------------

def score_graph(model, positive_token_id: int, negative_token_id: int):
    """The torch module that gets exported: (input_ids, attention_mask) -> score [batch] float32."""
    from ..backends.torch_backend import folded_score_head, model_body

    body = model_body(model)
    head_row, head_offset = folded_score_head(model, positive_token_id, negative_token_id)
    return _score_graph_class()(body, head_row, head_offset).eval()


def _additive_mask(allowed):
    """[batch, 1, queries, keys] float32: 0 where a query may see a key, the lowest float elsewhere."""
    import torch

    return torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(
        ~allowed, torch.finfo(torch.float32).min
    ).unsqueeze(1)


@functools.cache
def _score_graph_class():
    import torch

    class ScoreGraph(torch.nn.Module):
        """input_ids, attention_mask (left padded) -> score: what the torch backend computes, as one module.

        It builds positions and a 4-D additive mask itself, so the traced graph needs no transformers mask
        code (which branches on Python values and does not trace to dynamic shapes).
        """

        def __init__(self, body, head_row, head_offset):
            super().__init__()
            self.body = body
            self.register_buffer("head_row", head_row.detach().float().clone())
            self.register_buffer("head_offset", head_offset.detach().float().reshape(()).clone())

        def forward(self, input_ids, attention_mask):
            # Same positions as contract.position_ids: 0 on each row's first real token.
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            index = torch.ones_like(attention_mask).cumsum(-1)  # 1..seq on every row, traced shape-free
            query_index = index.unsqueeze(2)
            key_index = index.unsqueeze(1)
            # Causal, and only real keys; every query also sees itself, so padded rows never have an
            # all-masked softmax (NaN in fp16) and real rows are unchanged (their pads lie before them).
            allowed = (key_index <= query_index) & ((attention_mask.unsqueeze(1) > 0) | (key_index == query_index))
            hidden = self.body(input_ids=input_ids, attention_mask=_additive_mask(allowed), position_ids=positions,
                               use_cache=False).last_hidden_state[:, -1, :]
            # Mul + ReduceSum rather than MatMul: the weight quantizers leave it alone, so the head stays fp32.
            return (hidden.float() * self.head_row).sum(-1) + self.head_offset

    return ScoreGraph


# ---- the prefix reuse graphs ----------------------------------------------------------------------------

#: the reuse graphs, in the order they run
REUSE_FILENAMES = (ONNX_PREFIX_MODEL_FILENAME, ONNX_SUFFIX_MODEL_FILENAME)
_KV_AXES = {1: "batch", 3: "prefix"}
_PREFIX_AXES = {ONNX_PREFIX_INPUT_NAME: {0: "batch", 1: "prefix"},
                **{name: _KV_AXES for name in ONNX_PREFIX_OUTPUT_NAMES}}
_SUFFIX_AXES = {**{name: _KV_AXES for name in ONNX_SUFFIX_INPUT_NAMES[:2]},
                **{name: {0: "batch", 1: "suffix"} for name in ONNX_SUFFIX_INPUT_NAMES[2:]},
                ONNX_OUTPUT_NAME: {0: "batch"}}


def reuse_graphs(model, positive_token_id: int, negative_token_id: int):
    """The two torch modules behind prefix reuse: prefix ids -> stacked keys/values; (past, suffix) -> score.

    Two graphs rather than one with an empty past: onnxruntime runs every node of a graph whatever outputs
    are asked for, so a single graph would stack [layers, batch, kv_heads, P + S, head_dim] keys/values on
    every suffix batch only to drop them.
    """
    from ..backends.torch_backend import folded_score_head, model_body

    body = model_body(model)
    head_row, head_offset = folded_score_head(model, positive_token_id, negative_token_id)
    prefix_class, suffix_class = _reuse_graph_classes()
    return prefix_class(body).eval(), suffix_class(body, head_row, head_offset).eval()


@functools.cache
def _reuse_graph_classes():
    import torch

    from ..backends.torch_backend import cache_layers

    def stacked(cache):
        layers = cache_layers(cache)
        return torch.stack([k for k, _ in layers]), torch.stack([v for _, v in layers])

    class PrefixGraph(torch.nn.Module):
        """prefix_ids [batch, P] (no padding) -> keys and values of every layer, as torch_backend's
        prefix_key_values; positions and the causal mask are built here, as in ScoreGraph."""

        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, prefix_ids):
            index = torch.ones_like(prefix_ids).cumsum(-1)  # 1..P, traced shape-free
            positions = index - 1
            allowed = index.unsqueeze(1) <= index.unsqueeze(2)
            out = self.body(input_ids=prefix_ids, attention_mask=_additive_mask(allowed), position_ids=positions,
                            cache_position=positions[0], use_cache=True)
            return stacked(out.past_key_values)

    class SuffixGraph(torch.nn.Module):
        """past keys/values of a prefix of length P, right-padded suffix ids and mask -> score of prefix + suffix.

        As torch_backend's suffix_scores: every suffix starts at position P, sees the whole prefix and its own
        earlier real tokens; the score is read at each row's last real token. A pad position also sees itself,
        so its softmax is never empty; no real position ever sees a pad (they come after it).
        """

        def __init__(self, body, head_row, head_offset):
            super().__init__()
            self.body = body
            self.layers = len(body.layers)
            self.register_buffer("head_row", head_row.detach().float().clone())
            self.register_buffer("head_offset", head_offset.detach().float().reshape(()).clone())

        def forward(self, past_keys, past_values, suffix_ids, suffix_mask):
            from transformers import DynamicCache

            cache = DynamicCache()
            for layer in range(self.layers):
                cache.update(past_keys[layer], past_values[layer], layer)
            prefix_mask = torch.ones_like(past_keys[0, :, 0, :, 0], dtype=torch.long)  # [batch, P]
            key_mask = torch.cat([prefix_mask, suffix_mask], dim=-1)
            key_index = torch.ones_like(key_mask).cumsum(-1)  # 1..P+S
            query_index = key_index[:, prefix_mask.shape[-1]:]  # P+1..P+S
            allowed = (key_index.unsqueeze(1) <= query_index.unsqueeze(2)) & (
                (key_mask.unsqueeze(1) > 0) | (key_index.unsqueeze(1) == query_index.unsqueeze(2)))
            positions = query_index - 1
            hidden = self.body(input_ids=suffix_ids, attention_mask=_additive_mask(allowed), position_ids=positions,
                               past_key_values=cache, cache_position=positions[0], use_cache=True).last_hidden_state
            last = (suffix_mask.sum(-1) - 1).clamp(min=0)
            hidden = hidden.gather(1, last.reshape(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
            # Mul + ReduceSum as in ScoreGraph, so the head stays fp32 through every quantization.
            return (hidden.float() * self.head_row).sum(-1) + self.head_offset

    return PrefixGraph, SuffixGraph


def _reuse_sample(prompts: PromptBuilder) -> tuple[dict, dict]:
    """A short prefix and two right-padded suffixes of different lengths, for tracing."""
    import numpy as np

    from ..contract import right_pad, shared_prefix_length

    ids = prompts.build("reranker", ["documents", "short and longer documents"])
    prefix = shared_prefix_length(ids)
    suffix_ids, suffix_mask = right_pad([row[prefix:] for row in ids])
    return ({ONNX_PREFIX_INPUT_NAME: np.asarray([ids[0][:prefix]], dtype=np.int64)},
            dict(zip(ONNX_SUFFIX_INPUT_NAMES[2:], (suffix_ids, suffix_mask))))


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # transformers raises many types for a missing or broken tokenizer
        raise ProrankError(f"{model_dir}: cannot load the tokenizer ({exc})") from None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ContractError(f"{model_dir}: a fast (Rust `tokenizers`) tokenizer is needed; this model only has a "
                            "slow one")
    return tokenizer


def _load_causal_lm(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        # Eager attention: the additive 4-D mask from ScoreGraph goes straight into softmax.
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    except ValueError as exc:  # "Unrecognized configuration class ... for this kind of AutoModel"
        raise ContractError(
            f"{model_dir}: not a causal language model that transformers can load ({str(exc).splitlines()[0]}); "
            "ProRank scoring needs a decoder with an LM head"
        ) from None
    return model.eval()


def _sample_inputs(prompts: PromptBuilder) -> dict:
    """Two short left-padded rows (tracing cost grows with length; the axes stay dynamic)."""
    from ..contract import left_pad

    ids = prompts.build("reranker", ["documents"])[0]
    input_ids, attention_mask = left_pad([ids[:12], ids[:5]])
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _trace_to_onnx(graph, path: Path, opset: int, sample: dict, inputs: tuple = ONNX_INPUT_NAMES,
                   outputs: tuple = (ONNX_OUTPUT_NAME,), axes: dict | None = None) -> None:
    import torch

    if axes is None:
        axes = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUT_NAMES}
        axes[ONNX_OUTPUT_NAME] = {0: "batch"}
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is chosen on purpose (dynamo=False); its deprecation notices are noise.
            warnings.simplefilter("ignore", DeprecationWarning)
            # transformers' DynamicLayer starts each layer's cache as an empty constant that the first update
            # concatenates to; the exporter drops empty Concat inputs, so the constant is harmless.
            warnings.filterwarnings("ignore", message="torch.tensor results are registered as constants",
                                    category=torch.jit.TracerWarning)
            torch.onnx.export(
                graph, tuple(torch.from_numpy(sample[name]) for name in inputs), str(path),
                input_names=list(inputs), output_names=list(outputs), dynamic_axes=axes,
                opset_version=opset, do_constant_folding=True,
                # onnxruntime's quantizers fail on graphs from the dynamo exporter.
                dynamo=False,
            )
    except Exception as exc:
        raise ProrankError(f"ONNX export of {type(graph.body).__name__} failed: {exc}") from exc


# ---- quantization ---------------------------------------------------------------------------------------

def _nbits_quantizer_module():
    """onnxruntime's MatMulNBits quantizer module without its import side effect: it calls
    logging.basicConfig(level=INFO), which prints a line per graph node it skips (22,632 lines for SmolLM2's
    int8 export with the reuse graphs) and turns on INFO logging for every library in the process."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer as module

    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger(module.__name__).setLevel(logging.WARNING)
    return module


def _quantize_int8(source: Path, target: Path) -> None:
    """8-bit weight-only MatMuls (MatMulNBits, symmetric, one scale per 32 weights); activations stay fp32.

    onnxruntime's quantize_dynamic also quantizes activations, per tensor, and the outlier channels of small
    LMs wreck that: on SmolLM2-135M it dropped the Spearman correlation with fp32 scores to about 0.2.
    The embedding table stays fp32 (onnxruntime quantizes a Gather only to 4 bits).
    """
    MatMulNBitsQuantizer = _nbits_quantizer_module().MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(_load_onnx(source), bits=8, block_size=ONNX_BLOCK_SIZE, is_symmetric=True,
                                     op_types_to_quantize=("MatMul",))
    quantizer.process()
    _save_onnx(quantizer.model.model, target)


def _quantize_int4(source: Path, target: Path, adapter: dict | None = None) -> None:
    """4-bit weight-only MatMuls (min-max per block with a float zero point) and a 4-bit embedding table.

    Symmetric 4-bit (one scale per block, zero at 8) wastes a level and cannot place the grid; on
    SmolLM2-135M it gave Spearman 0.87 against fp32 scores, the min-max blocks 0.99 or better. With `adapter`
    (onnx_int4.adapter_parts) the base weights go to 4 bits, the base embedding to 8, and the adapter's delta
    stays beside them, exact (a low-rank part in fp32, a 1-bit part as +-1 in 4 bits times its fp32 scales).
    """
    from onnx import version_converter
    module = _nbits_quantizer_module()
    HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer = module.HQQWeightOnlyQuantConfig, module.MatMulNBitsQuantizer

    model = _load_onnx(source)
    # The 4-bit embedding (GatherBlockQuantized) stores an int4 tensor, which needs opset 21; the quantizer
    # only relabels the opset, which is exact from 20 (opset 21 added int4 types and changed nothing else
    # this graph uses), so older graphs go through the real converter first.
    if _default_opset(model) < 20:
        model = version_converter.convert_version(model, 21)
    excluded = []
    if adapter:
        from .onnx_int4 import split_adapter

        model, excluded, split = split_adapter(model, adapter)
        if not split:
            raise ProrankError(f"{source}: no MatMul weight of this graph is one the checkpoint's adapter was merged "
                               "into (was the checkpoint changed after the merge?)")
    matmuls = MatMulNBitsQuantizer(model, algo_config=HQQWeightOnlyQuantConfig(block_size=ONNX_BLOCK_SIZE, bits=4),
                                   nodes_to_exclude=excluded)
    matmuls.node_quantizer = _min_max_block_quantizer(matmuls.algo_config)
    with warnings.catch_warnings():
        # It wraps read-only weight arrays in torch tensors that it only reads.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        matmuls.process()
    # GatherBlockQuantized takes integer zero points only; asymmetric still beats symmetric here.
    embedding = MatMulNBitsQuantizer(matmuls.model.model, bits=4, block_size=ONNX_BLOCK_SIZE, is_symmetric=False,
                                     op_types_to_quantize=("Gather",), nodes_to_exclude=excluded)
    embedding.process()
    _save_onnx(embedding.model.model, target)


def onnx_feeds(token_ids: Sequence[Sequence[int]], batch: int = 8) -> list[dict]:
    """model.onnx's inputs for the prompts, `batch` prompts a feed, each feed left-padded."""
    from ..contract import left_pad

    return [dict(zip(ONNX_INPUT_NAMES, left_pad(token_ids[i:i + batch]))) for i in range(0, len(token_ids), batch)]


def _w8a8_factors(fp32_path: Path, prompts: PromptBuilder) -> dict:
    """Smoothing factors and outlier channels for w8a8, calibrated by onnxruntime on the built-in pairs (no
    torch; the outlier channels belong to the model, not to one text)."""
    from .onnx_int8 import calibrate, channel_factors
    from .parity import builtin_pairs

    return channel_factors(calibrate(fp32_path, onnx_feeds(prompts.build_pairs(builtin_pairs()))))


def _quant_info(quant: str, factors: dict | None) -> dict:
    """What export_info.json records of the level's calibration (see _convert for `factors`)."""
    if not factors:
        return {}
    if quant == "int4":
        ranks = [min(part.low_rank[0].shape) for part in factors.values() if part.low_rank is not None]
        return {"int4": {"base_plus_adapter": True, "embedding": "8-bit base plus the adapter's delta",
                         "adapter_rank": max(ranks, default=0),
                         # each weight is keyed in both of its layouts
                         "one_bit_weights": sum(part.signs is not None for part in factors.values()) // 2}}
    from .onnx_int8 import INT8_SMOOTHING_ALPHA, OUTLIER_RATIO

    return {"w8a8": {"smoothing_alpha": INT8_SMOOTHING_ALPHA, "outlier_ratio": OUTLIER_RATIO,
                     "matmuls": len(factors), "outlier_channels": sum(len(f["outliers"]) for f in factors.values()),
                     "calibration": "built-in pairs (export/parity.py)"}}


def _min_max_block_quantizer(config):
    """onnxruntime's HQQ block quantizer without its iterative refinement and zero-point rounding.

    What remains is the GGUF Q4_1 scheme: per block of 32 weights, scale = (max - min) / 15 and a float
    zero point, so the block's extremes are exact. The refinement costs minutes on a CPU and, by rounding
    the zero point first, loses the exact grid of checkpoints that were 4-bit already (SmolLM2 from GGUF).
    """
    HQQWeightOnlyQuantizer = _nbits_quantizer_module().HQQWeightOnlyQuantizer

    class MinMaxBlockQuantizer(HQQWeightOnlyQuantizer):
        def quantize_internal(self, tensor, bits=4, channel_wise=True, group_size=64, optimize=True,
                              round_zero=True, axis=1):
            return super().quantize_internal(tensor, bits=bits, channel_wise=channel_wise, group_size=group_size,
                                             optimize=False, round_zero=False, axis=axis)

    return MinMaxBlockQuantizer(config)


def _default_opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _convert_fp16(source: Path, target: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = _load_onnx(source)
    # The prefix graph ends at the keys/values: it has no score head to keep in fp32.
    head_nodes = _score_head_nodes(model) if ONNX_OUTPUT_NAME in {o.name for o in model.graph.output} else []
    # keep_io_types: callers feed int64 ids and read a float32 score whatever the weights are.
    model = convert_float_to_float16(model, keep_io_types=True, node_block_list=head_nodes)
    _save_onnx(model, target)


def _score_head_nodes(model) -> list[str]:
    """The folded head's nodes (Add <- ReduceSum <- Mul, walking back from the score output)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    constants = {init.name for init in model.graph.initializer}
    names, tensor = [], ONNX_OUTPUT_NAME
    for op_type in ("Add", "ReduceSum", "Mul"):
        node = producers.get(tensor)
        if node is None or node.op_type != op_type:
            raise ProrankError(f"unexpected score head in the exported graph (expected {op_type} before {tensor})")
        names.append(node.name)
        tensor = next(i for i in node.input if i not in constants and i in producers)
    return names


# ---- files ----------------------------------------------------------------------------------------------

def _load_onnx(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, missing external data, ...
        raise ProrankError(f"{path}: cannot read this ONNX model ({exc})") from None


def _save_onnx(model, path: Path) -> None:
    import onnx

    large = model.ByteSize() > _PROTOBUF_LIMIT
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=ONNX_EXTERNAL_DATA_FILENAME)


def _consolidate_external_data(path: Path) -> None:
    """The TorchScript exporter writes a model over 2 GiB as one file per tensor; gather them into one."""
    import onnx

    if len(list(path.parent.iterdir())) == 1:
        return
    model = onnx.load(str(path))
    for item in path.parent.iterdir():
        item.unlink()
    _save_onnx(model, path)


def _onnx_bytes(path: Path) -> int:
    """The model file plus its external data file, if any."""
    data = path.parent / ONNX_EXTERNAL_DATA_FILENAME
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def _write_tokenizer(model_dir: Path, tokenizer, staging: Path) -> None:
    source = model_dir / TOKENIZER_FILENAME
    if source.is_file():
        shutil.copyfile(source, staging / TOKENIZER_FILENAME)
    else:
        tokenizer.backend_tokenizer.save(str(staging / TOKENIZER_FILENAME))


def _check_tokenizer_agrees(path: Path, prompts: PromptBuilder) -> None:
    """The artifact's tokenizer must build the same prompt ids as the tokenizer the model was checked with."""
    from tokenizers import Tokenizer

    artifact = PromptBuilder(Tokenizer.from_file(str(path)), prompts.contract)
    sample = ("Which protein binds ATP?", "Kinases transfer phosphate groups from ATP to substrates.")
    if artifact.build_pairs([sample]) != prompts.build_pairs([sample]):
        raise ContractError(f"{path}: tokenizer.json tokenizes differently from the transformers tokenizer")


def _check_graph_scores(path: Path, sample: dict, expected) -> None:
    """Run the finished graph once: a broken export fails here rather than on a user's machine."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Only whether it runs matters here; graph optimization would double the load time of a big model.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        (scores,) = session.run([ONNX_OUTPUT_NAME], sample)
    except Exception as exc:  # onnxruntime's own exception types
        raise ProrankError(f"{path.name}: the exported graph does not run in onnxruntime ({exc})") from None
    if scores.shape != (len(sample["input_ids"]),) or not np.all(np.isfinite(scores)):
        raise ProrankError(f"{path.name}: the exported graph returned {scores!r} on a test input")
    if expected is not None and not np.allclose(scores, expected, atol=1e-3, rtol=1e-4):
        raise ProrankError(f"{path.name}: the exported graph scores {scores}, torch scores {expected}")


# ---- reuse graph files --------------------------------------------------------------------------------

_REUSE_INFO_KEYS = ("prefix_reuse",)


def _write_reuse_graphs(sources: dict[str, Path], staging: Path, quant: str, factors: dict | None = None) -> int:
    """staging/prefix.onnx and suffix.onnx in the asked-for precision, their weights read from model.onnx.

    Each is converted exactly as model.onnx was (the quantizers are deterministic), so its weight tensors are
    byte-identical to model.onnx's and are stored as references to them; returns the bytes so shared.
    """
    shared = 0
    for name, source in sources.items():
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=staging))
        try:
            try:
                model = _load_borrowing_graph(source)
                if quant != "fp32":
                    if model is not None:  # its weights gathered inline, for the quantizers (they take paths)
                        _save_onnx(model, work / f"fp32-{name}")
                        source = work / f"fp32-{name}"
                    _convert(source, work / name, quant, factors)
                    source, model = work / name, None
                if model is None:
                    model = _load_onnx(source)
            except ProrankError as exc:
                raise ProrankError(f"{exc}; {name} reads its weights from the {ONNX_MODEL_FILENAME} beside it, "
                                   "which must be the one it was exported with") from None
            shared += _point_at_model_weights(model, staging / ONNX_MODEL_FILENAME)
            if model.ByteSize() > _PROTOBUF_LIMIT:
                raise ProrankError(f"{name}: {model.ByteSize()} bytes of weights that model.onnx lacks; "
                                   "too big for one protobuf file")
            # Serialized directly: onnx.save_model would try to write the referenced tensors out again.
            (staging / name).write_bytes(model.SerializeToString())
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return shared


def _point_at_model_weights(model, main_path: Path) -> int:
    """Turn each big initializer of `model` that model.onnx also holds into external data at its bytes there.

    model.onnx keeps its weights inline (or in model.onnx.data when over 2 GiB), so an inline tensor's bytes
    are found in the file itself. Tensors are matched by content, not by name (the tracer names folded
    weights per graph). Returns the bytes made external.
    """
    import hashlib
    import mmap

    import onnx

    main = _load_onnx_header(main_path)
    with open(main_path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as blob:
        located = _locate_tensors(main, main_path, blob)
    shared = 0
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) < _SHARE_MIN_BYTES:
            continue
        where = located.get((tensor.data_type, hashlib.sha256(tensor.raw_data).digest()))
        if where is None:
            continue
        location, offset, length = where
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        shared += length
    return shared


def _locate_tensors(main, main_path: Path, blob) -> dict[tuple, tuple[str, int, int]]:
    """(data type, sha256 of the bytes) -> (file, offset, length) of each big initializer of model.onnx."""
    import hashlib

    import onnx

    located: dict[tuple, tuple[str, int, int]] = {}
    position = 0
    for tensor in main.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            length = int(entry["length"])
            if length < _SHARE_MIN_BYTES:
                continue
            data = _read_external(main_path.parent, entry)
            where = (entry["location"], int(entry.get("offset", 0)), length)
        elif len(tensor.raw_data) >= _SHARE_MIN_BYTES:
            data = tensor.raw_data
            # Initializers are serialized in order, so each one's bytes lie after the previous one's; an earlier
            # hit is as good, since it holds the same bytes.
            offset = blob.find(data, position)
            if offset < 0:
                continue
            position = offset + len(data)
            where = (main_path.name, offset, len(data))
        else:
            continue
        located.setdefault((tensor.data_type, hashlib.sha256(data).digest()), where)
    return located


def _read_external(folder: Path, entry: dict) -> bytes:
    """The bytes an ONNX external-data entry (location, offset, length) points at, in `folder`."""
    with open(folder / entry["location"], "rb") as handle:
        handle.seek(int(entry.get("offset", 0)))
        return handle.read(int(entry["length"]))


def _load_borrowing_graph(path: Path):
    """A reuse graph of an existing artifact with the weights it reads from model.onnx filled in; None for a
    graph without external data (a fresh trace).

    onnx.load would refuse these when model.onnx is a symbolic link, as in a Hugging Face cache snapshot
    (onnxruntime reads them fine), so they are read here: a plain file name beside the graph, opened as a file.
    """
    import onnx

    model = _load_onnx_header(path)
    tensors = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not tensors:
        return None
    for tensor in tensors:
        entry = {e.key: e.value for e in tensor.external_data}
        location = entry.get("location", "")
        if Path(location).name != location or location in ("", ".", ".."):
            raise ProrankError(f"{path}: tensor {tensor.name!r} points outside the artifact folder ({location!r})")
        try:
            data = _read_external(path.parent, entry)
        except (OSError, KeyError, ValueError) as exc:
            raise ProrankError(f"{path}: cannot read tensor {tensor.name!r} from {location} ({exc})") from None
        if len(data) != int(entry["length"]):
            raise ProrankError(f"{path}: tensor {tensor.name!r} lies past the end of {location}")
        tensor.raw_data = data
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return model


def _load_onnx_header(path: Path):
    """The model proto without loading external data."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError
        raise ProrankError(f"{path}: cannot read this ONNX model ({exc})") from None


def _reuse_info(staging: Path, shared: int | None) -> dict:
    """export_info's record of the reuse graphs: files, names, and the weight bytes they borrow from model.onnx."""
    from ..backends.onnx_artifact import weights_fingerprint

    if shared is None:
        return {"prefix_reuse": None}
    return {"prefix_reuse": {
        "prefix_model": ONNX_PREFIX_MODEL_FILENAME,
        "prefix_inputs": [ONNX_PREFIX_INPUT_NAME],
        "prefix_outputs": list(ONNX_PREFIX_OUTPUT_NAMES),
        "suffix_model": ONNX_SUFFIX_MODEL_FILENAME,
        "suffix_inputs": list(ONNX_SUFFIX_INPUT_NAMES),
        "suffix_output": ONNX_OUTPUT_NAME,
        "bytes": sum((staging / name).stat().st_size for name in REUSE_FILENAMES),
        "weight_bytes_shared_with_model": shared,
        "weights_fingerprint": weights_fingerprint(staging),
    }}


def _check_reuse_graphs(staging: Path, prompts: PromptBuilder, quant: str, fp32_model: Path | None = None) -> None:
    """Prefix + suffix graphs must score test prompts as model.onnx does (same weights, same precision).

    fp32_model: for w8a8, the fp32 graph it was made from. w8a8 rounds activations at run time, and the two
    paths add in different orders, so a value that lands on the other side of a rounding step in one of them
    moves the rest of its prompt by as much as w8a8's own error: on SmolLM2-135M's check prompts 6.5e-3 in
    one export and 0.49 in another, where model.onnx itself was 0.53 from fp32 (and the reuse graphs 0.035).
    So there the reuse graphs are held to the tolerance plus twice model.onnx's distance from fp32; a graph
    with wrong weights is off by far more.
    """
    import numpy as np
    import onnxruntime as ort

    from ..backends.onnx_artifact import suffix_feed
    from ..backends.onnx_backend import reuse_scores
    from ..contract import left_pad, shared_prefix_length

    ids = prompts.build("Which protein binds ATP?", ["Kinases transfer phosphate groups from ATP to substrates.",
                                                    "", "ATP " * 20])
    prefix = shared_prefix_length(ids)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sessions = {}
    for name in (ONNX_MODEL_FILENAME, *REUSE_FILENAMES):
        try:
            sessions[name] = ort.InferenceSession(str(staging / name), sess_options=options,
                                                  providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types
            raise ProrankError(f"{name}: the exported graph does not run in onnxruntime ({exc})") from None
    (expected,) = sessions[ONNX_MODEL_FILENAME].run([ONNX_OUTPUT_NAME], dict(zip(ONNX_INPUT_NAMES, left_pad(ids))))
    try:
        past = sessions[ONNX_PREFIX_MODEL_FILENAME].run(
            list(ONNX_PREFIX_OUTPUT_NAMES), {ONNX_PREFIX_INPUT_NAME: np.asarray([ids[0][:prefix]], dtype=np.int64)})
        scores = reuse_scores(sessions[ONNX_SUFFIX_MODEL_FILENAME], suffix_feed(past, [row[prefix:] for row in ids]))
    except Exception as exc:  # onnxruntime's own exception types
        raise ProrankError(f"{ONNX_PREFIX_MODEL_FILENAME}/{ONNX_SUFFIX_MODEL_FILENAME}: the reuse graphs do not "
                           f"run in onnxruntime ({exc})") from None
    drift = float(np.abs(scores - expected).max())
    tolerance = _REUSE_TOLERANCE[quant]
    if fp32_model is not None:
        (fp32,) = ort.InferenceSession(str(fp32_model), sess_options=options, providers=["CPUExecutionProvider"]) \
            .run([ONNX_OUTPUT_NAME], dict(zip(ONNX_INPUT_NAMES, left_pad(ids))))
        tolerance += 2 * float(np.abs(expected - fp32).max())
    if not np.isfinite(drift) or drift > tolerance:
        raise ProrankError(f"{ONNX_SUFFIX_MODEL_FILENAME}: the reuse graphs score {scores}, {ONNX_MODEL_FILENAME} "
                           f"scores {expected} (tolerance {tolerance:.3g})")


@contextlib.contextmanager
def _staging_folder(output_dir: Path, overwrite: bool):
    """A staging sibling of output_dir, renamed to it when the block completes and removed in any case."""
    with staged(output_dir, folder=True) as staging:
        yield staging
        _publish(staging, output_dir, overwrite)


def _publish(staging: Path, output_dir: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; an old artifact is moved aside first and removed after."""
    old = None
    if output_dir.exists() or output_dir.is_symlink():
        if not overwrite:
            raise ProrankError(f"{output_dir} already exists; pass overwrite=True (--overwrite) to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent)) / "old"
        os.replace(output_dir, old)
    try:
        os.replace(staging, output_dir)
    except OSError as exc:
        if old is not None:
            os.replace(old, output_dir)
        raise ProrankError(f"cannot move the finished export to {output_dir}: {exc}") from None
    finally:
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
