"""Export a ProRank causal LM to an ONNX scoring artifact: token ids in, one score per row out.

The graph holds only what scoring needs: the decoder body, its last position, and the LM head folded into
one fp32 row (W[positive] - W[negative]), so it never computes [batch, seq, vocab] logits. The artifact is a
folder that the onnx backend reads without torch or transformers:

    model.onnx               inputs input_ids, attention_mask [batch, seq] int64 -> output score [batch] float32
    tokenizer.json           the checkpoint's `tokenizers` tokenizer
    prorank_contract.json    the prompt contract, label token ids filled in
    export_info.json         source, quantization, opset, file sizes, versions
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
    QUANTS,
    TOKENIZER_FILENAME,
)
from ..staging import staged

# The highest opset torch's TorchScript exporter writes.
DEFAULT_OPSET = 20
# protobuf cannot serialize a message over 2 GiB; leave room for the graph itself.
_PROTOBUF_LIMIT = 2**31 - 64 * 2**20


def export_onnx(model_dir: str | Path, output_dir: str | Path, quant: str = "fp32", opset: int = DEFAULT_OPSET,
                max_length: int | None = None, overwrite: bool = False) -> dict:
    """Export the checkpoint in `model_dir` to an ONNX scoring artifact folder; returns its export_info.

    quant: "fp32"; "fp16" (for GPUs; inputs, output and score head stay fp32); "int8" (8-bit weight-only
    MatMulNBits, symmetric blocks of 32); "int4" (4-bit weight-only MatMulNBits, min-max blocks of 32 with
    float zero points, and the embedding table as 4-bit GatherBlockQuantized). Activations stay fp32.
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

    with _staging_folder(output_dir, overwrite) as staging:
        fp32_path = staging / "fp32" / ONNX_MODEL_FILENAME
        fp32_path.parent.mkdir()
        sample = _sample_inputs(prompts)
        with torch.inference_mode():
            _trace_to_onnx(graph, fp32_path, opset, sample)
            expected = graph(*(torch.from_numpy(sample[name]) for name in ONNX_INPUT_NAMES)).numpy()
        _consolidate_external_data(fp32_path)
        fp32_bytes = _onnx_bytes(fp32_path)
        model_path = _write_model(fp32_path, staging, quant)
        shutil.rmtree(fp32_path.parent)
        _check_graph_scores(model_path, sample, expected if quant == "fp32" else None)

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
    with _staging_folder(output_dir, overwrite) as staging:
        model_path = _write_model(source_model, staging, quant, copy=True)
        _check_graph_scores(model_path, _sample_inputs(prompts), None)
        shutil.copyfile(artifact_dir / TOKENIZER_FILENAME, staging / TOKENIZER_FILENAME)
        prompts.contract.save(staging)
        info = dict(source_info, quant=quant, source_artifact=str(artifact_dir.resolve()),
                    model_bytes=_onnx_bytes(model_path), export_seconds=round(time.perf_counter() - started, 1),
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


def _write_model(fp32_path: Path, staging: Path, quant: str, copy: bool = False) -> Path:
    """staging/model.onnx in the asked-for precision, made from the fp32 graph at `fp32_path`."""
    target = staging / ONNX_MODEL_FILENAME
    if quant == "fp32":
        transfer = shutil.copyfile if copy else os.replace
        transfer(fp32_path, target)
        if (fp32_path.parent / ONNX_EXTERNAL_DATA_FILENAME).is_file():
            transfer(fp32_path.parent / ONNX_EXTERNAL_DATA_FILENAME, staging / ONNX_EXTERNAL_DATA_FILENAME)
    elif quant == "int8":
        _quantize_int8(fp32_path, target)
    elif quant == "int4":
        _quantize_int4(fp32_path, target)
    else:
        _convert_fp16(fp32_path, target)
    return target


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
            additive = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(
                ~allowed, torch.finfo(torch.float32).min
            ).unsqueeze(1)
            hidden = self.body(input_ids=input_ids, attention_mask=additive, position_ids=positions,
                               use_cache=False).last_hidden_state[:, -1, :]
            # Mul + ReduceSum rather than MatMul: the weight quantizers leave it alone, so the head stays fp32.
            return (hidden.float() * self.head_row).sum(-1) + self.head_offset

    return ScoreGraph


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


def _trace_to_onnx(graph, path: Path, opset: int, sample: dict) -> None:
    import torch

    axes = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUT_NAMES}
    axes[ONNX_OUTPUT_NAME] = {0: "batch"}
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is chosen on purpose (dynamo=False); its deprecation notices are noise.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                graph, tuple(torch.from_numpy(sample[name]) for name in ONNX_INPUT_NAMES), str(path),
                input_names=list(ONNX_INPUT_NAMES), output_names=[ONNX_OUTPUT_NAME], dynamic_axes=axes,
                opset_version=opset, do_constant_folding=True,
                # onnxruntime's quantizers fail on graphs from the dynamo exporter.
                dynamo=False,
            )
    except Exception as exc:
        raise ProrankError(f"ONNX export of {type(graph.body).__name__} failed: {exc}") from exc


# ---- quantization ---------------------------------------------------------------------------------------

def _quantize_int8(source: Path, target: Path) -> None:
    """8-bit weight-only MatMuls (MatMulNBits, symmetric, one scale per 32 weights); activations stay fp32.

    onnxruntime's quantize_dynamic also quantizes activations, per tensor, and the outlier channels of small
    LMs wreck that: on SmolLM2-135M it dropped the Spearman correlation with fp32 scores to about 0.2.
    The embedding table stays fp32 (onnxruntime quantizes a Gather only to 4 bits).
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(_load_onnx(source), bits=8, block_size=ONNX_BLOCK_SIZE, is_symmetric=True,
                                     op_types_to_quantize=("MatMul",))
    quantizer.process()
    _save_onnx(quantizer.model.model, target)


def _quantize_int4(source: Path, target: Path) -> None:
    """4-bit weight-only MatMuls (min-max per block with a float zero point) and a 4-bit embedding table.

    Symmetric 4-bit (one scale per block, zero at 8) wastes a level and cannot place the grid; on
    SmolLM2-135M it gave Spearman 0.87 against fp32 scores, the min-max blocks 0.99 or better.
    """
    from onnx import version_converter
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = _load_onnx(source)
    # The 4-bit embedding (GatherBlockQuantized) stores an int4 tensor, which needs opset 21; the quantizer
    # only relabels the opset, which is exact from 20 (opset 21 added int4 types and changed nothing else
    # this graph uses), so older graphs go through the real converter first.
    if _default_opset(model) < 20:
        model = version_converter.convert_version(model, 21)
    matmuls = MatMulNBitsQuantizer(model, algo_config=HQQWeightOnlyQuantConfig(block_size=ONNX_BLOCK_SIZE, bits=4))
    matmuls.node_quantizer = _min_max_block_quantizer(matmuls.algo_config)
    with warnings.catch_warnings():
        # It wraps read-only weight arrays in torch tensors that it only reads.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        matmuls.process()
    # GatherBlockQuantized takes integer zero points only; asymmetric still beats symmetric here.
    embedding = MatMulNBitsQuantizer(matmuls.model.model, bits=4, block_size=ONNX_BLOCK_SIZE, is_symmetric=False,
                                     op_types_to_quantize=("Gather",))
    embedding.process()
    _save_onnx(embedding.model.model, target)


def _min_max_block_quantizer(config):
    """onnxruntime's HQQ block quantizer without its iterative refinement and zero-point rounding.

    What remains is the GGUF Q4_1 scheme: per block of 32 weights, scale = (max - min) / 15 and a float
    zero point, so the block's extremes are exact. The refinement costs minutes on a CPU and, by rounding
    the zero point first, loses the exact grid of checkpoints that were 4-bit already (SmolLM2 from GGUF).
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantizer

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
    head_nodes = _score_head_nodes(model)
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
