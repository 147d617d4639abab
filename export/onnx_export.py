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

import functools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .. import __version__
from ..contract import CONTRACT_FILENAME, PromptBuilder, ScoringContract
from ..errors import ContractError, ProrankError

QUANTS = ("fp32", "fp16", "int8", "int4")
DEFAULT_OPSET = 17
MODEL_FILENAME = "model.onnx"
EXTERNAL_DATA_FILENAME = "model.onnx.data"
TOKENIZER_FILENAME = "tokenizer.json"
EXPORT_INFO_FILENAME = "export_info.json"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "score"
# int4 blocks: 32 input channels per scale measured closer to fp32 than 128 for a few % more bytes.
INT4_BLOCK_SIZE = 32
# protobuf cannot serialize a message over 2 GiB; leave room for the graph itself.
_PROTOBUF_LIMIT = 2**31 - 64 * 2**20


def export_onnx(model_dir: str | Path, output_dir: str | Path, quant: str = "fp32", opset: int = DEFAULT_OPSET,
                max_length: int | None = None, overwrite: bool = False) -> dict:
    """Export the checkpoint in `model_dir` to an ONNX scoring artifact folder; returns export_info.

    quant: "fp32"; "fp16" (for GPUs; inputs, output and score head stay fp32); "int8" (dynamic quantization of
    the MatMul weights, per output channel); "int4" (4-bit block-wise weight-only MatMulNBits, plus the
    embedding table as GatherBlockQuantized).
    max_length: stored in the artifact's contract (default: the checkpoint's contract).
    The folder is built beside `output_dir` and renamed into place only when complete.
    """
    if quant not in QUANTS:
        raise ProrankError(f"unknown quantization {quant!r}; choose one of: {', '.join(QUANTS)}")
    model_dir = Path(model_dir)
    output_dir = Path(output_dir)
    if not (model_dir / "config.json").is_file():
        raise ProrankError(f"{model_dir}: not a transformers checkpoint (no config.json)")
    if output_dir.exists() and not overwrite:
        raise ProrankError(f"{output_dir} already exists; pass overwrite=True (--overwrite) to replace it")

    import torch

    started = time.perf_counter()
    tokenizer = _load_tokenizer(model_dir)
    contract = ScoringContract.load(model_dir)
    prompts = PromptBuilder(tokenizer.backend_tokenizer, contract, max_length=max_length)
    model = _load_causal_lm(model_dir)
    graph = score_graph(model, prompts.positive_token_id, prompts.negative_token_id)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        fp32_path = staging / "fp32" / MODEL_FILENAME
        fp32_path.parent.mkdir()
        with torch.inference_mode():
            reference = _trace_to_onnx(graph, fp32_path, opset, prompts)
        _consolidate_external_data(fp32_path)
        fp32_bytes = _onnx_bytes(fp32_path)
        model_path = staging / MODEL_FILENAME
        if quant == "fp32":
            for item in fp32_path.parent.iterdir():
                os.replace(item, staging / item.name)
        elif quant == "int8":
            _quantize_int8(fp32_path, model_path)
        elif quant == "int4":
            _quantize_int4(fp32_path, model_path)
        else:
            _convert_fp16(fp32_path, model_path)
        shutil.rmtree(fp32_path.parent)
        _check_graph_scores(model_path, reference, quant)

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
            "inputs": list(INPUT_NAMES),
            "output": OUTPUT_NAME,
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
        info["files"] = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
        info["files"][EXPORT_INFO_FILENAME] = 0  # itself; filled below
        (staging / EXPORT_INFO_FILENAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        info["files"][EXPORT_INFO_FILENAME] = (staging / EXPORT_INFO_FILENAME).stat().st_size
        _publish(staging, output_dir, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    info["path"] = str(output_dir)
    return info


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
        raise ContractError(f"{model_dir}: a fast (Rust `tokenizers`) tokenizer is needed; this model only has a slow one")
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


def _trace_to_onnx(graph, path: Path, opset: int, prompts: PromptBuilder):
    """Trace with two rows of different lengths (left padding) and return their torch scores."""
    import numpy as np
    import torch

    from ..contract import left_pad

    sample = prompts.build("what is a reranker", ["A reranker orders documents by relevance.", "short"])
    ids, mask = (torch.from_numpy(a) for a in left_pad(sample))
    dynamic = {"batch": 0, "sequence": 1}
    axes = {name: {index: axis for axis, index in dynamic.items()} for name in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch"}
    try:
        torch.onnx.export(
            graph, (ids, mask), str(path), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
            # The TorchScript exporter: onnxruntime's quantizers fail on dynamo-exported graphs.
            dynamo=False,
        )
    except Exception as exc:
        raise ProrankError(f"ONNX export of {type(graph.body).__name__} failed: {exc}") from exc
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
            "score": graph(ids, mask).numpy().astype(np.float32)}


# ---- quantization ---------------------------------------------------------------------------------------

def _quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
        # One scale per output channel: rows of a projection differ a lot in range.
        per_channel=True, use_external_data_format=_onnx_bytes(source) > _PROTOBUF_LIMIT,
    )


def _quantize_int4(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(source)), bits=4, block_size=INT4_BLOCK_SIZE, is_symmetric=True,
        op_types_to_quantize=("MatMul", "Gather"),
    )
    quantizer.process()
    _save_onnx(quantizer.model.model, target)


def _convert_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    head_nodes = _score_head_nodes(model)
    # keep_io_types: callers feed int64 ids and read a float32 score whatever the weights are.
    model = convert_float_to_float16(model, keep_io_types=True, node_block_list=head_nodes)
    _save_onnx(model, target)


def _score_head_nodes(model) -> list[str]:
    """Nodes from the last hidden state to the score output (the folded head), found by walking back."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names, frontier = [], [OUTPUT_NAME]
    while frontier:
        node = producers.get(frontier.pop())
        if node is None or node.op_type not in ("Add", "Mul", "ReduceSum", "Cast"):
            continue
        names.append(node.name)
        frontier.extend(node.input)
    return names


# ---- files ----------------------------------------------------------------------------------------------

def _save_onnx(model, path: Path) -> None:
    import onnx

    large = model.ByteSize() > _PROTOBUF_LIMIT
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=EXTERNAL_DATA_FILENAME)


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
    data = path.parent / EXTERNAL_DATA_FILENAME
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


def _check_graph_scores(path: Path, reference: dict, quant: str) -> None:
    """Run the exported graph once on the tracing sample: a broken export fails here, not at a user's."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (scores,) = session.run([OUTPUT_NAME], {k: reference[k] for k in INPUT_NAMES})
    if scores.shape != reference["score"].shape or not np.all(np.isfinite(scores)):
        raise ProrankError(f"the exported {quant} graph returned {scores!r} on the tracing sample")
    if quant == "fp32" and not np.allclose(scores, reference["score"], atol=1e-3, rtol=1e-4):
        raise ProrankError(
            f"the exported graph disagrees with torch on the tracing sample: {scores} vs {reference['score']}"
        )


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
