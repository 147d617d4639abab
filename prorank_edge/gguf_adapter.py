"""Apply a prorank adapter (see adapter.py) to a GGUF base model without torch: the edge path of the default.

An edge box with only the gguf extra has llama.cpp but no transformers, so it cannot merge the adapter the way
`apply_adapter` does. Here the base GGUF is dequantized with the `gguf` package (numpy), each tensor gets its
delta (`adapter_deltas`, the arrays the torch merge adds too), and the sum is written as one f16 GGUF with the
adapter's scoring contract in its metadata: the same weights the torch path merges, at f16 precision.

Needs numpy, `gguf` and `safetensors` (the `gguf` extra).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .adapter import adapter_deltas
from .contract import ScoringContract
from .errors import MissingExtraError, ProrankError
from .export.gguf_export import rotary_interleave
from .formats import GGUF_ARCH_NAMES, GGUF_CONTRACT_KEY, GGUF_RANK_HEAD_KEY
from .staging import staged


def _import_gguf():
    try:
        import gguf
        import safetensors.numpy  # noqa: F401  (adapter_deltas reads the adapter with it)
    except ImportError:
        raise MissingExtraError("applying the default adapter without torch", "gguf", "gguf") from None
    return gguf


def _field(reader, key: str):
    """A scalar or string metadata value of a GGUFReader (None when absent)."""
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    return bytes(value).decode("utf-8") if field.types[0].name == "STRING" else value[0].item()


def _copy_fields(reader, writer, gguf) -> None:
    """Every metadata key of the base except the reader's own and those the writer sets itself."""
    string, array = gguf.GGUFValueType.STRING, gguf.GGUFValueType.ARRAY
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        kind = field.types[0]
        if kind == array:
            sub = field.types[-1]
            values = [bytes(field.parts[i]) if sub == string else field.parts[i][0].item() for i in field.data]
            writer.add_key_value(field.name, values, kind, sub_type=sub)
        elif kind == string:
            writer.add_key_value(field.name, bytes(field.parts[field.data[0]]), kind)
        else:
            writer.add_key_value(field.name, field.parts[field.data[0]][0].item(), kind)


def rewrite_gguf(reader, path: str | Path, file_type: int, tensors, strings: dict[str, str] | None = None) -> None:
    """Write a GGUF at `path` with the metadata of `reader` (its file type set to `file_type`, `strings` added) and
    `tensors`, an iterable of (name, array, raw GGML type or None); the file is closed on a failure too. Used by
    the adapter merge here and by the q8_0 override of the exporter (export/gguf_export.py)."""
    gguf = _import_gguf()
    from .export.gguf_export import finish_gguf

    writer = gguf.GGUFWriter(str(path), _field(reader, "general.architecture"))
    try:
        _copy_fields(reader, writer, gguf)
        writer.add_file_type(file_type)
        for key, value in (strings or {}).items():
            writer.add_string(key, value)
        for name, array, raw_dtype in tensors:
            writer.add_tensor(name, array, raw_dtype=raw_dtype)
    except BaseException:
        writer.close()
        raise
    finish_gguf(writer)


def apply_adapter_to_gguf(base_gguf: str | Path, adapter_dir: str | Path, output_path: str | Path) -> Path:
    """Write base + adapter as an f16 GGUF reranker at output_path (via a temporary name); returns the path."""
    gguf = _import_gguf()
    base_gguf, adapter_dir, output_path = Path(base_gguf), Path(adapter_dir), Path(output_path)
    reader = gguf.GGUFReader(str(base_gguf))
    arch = _field(reader, "general.architecture")
    if _field(reader, GGUF_RANK_HEAD_KEY) is not None:
        # Its weights live in a rotated basis (export/rank_head.py); the adapter's deltas do not.
        raise ProrankError(f"{base_gguf}: this GGUF was exported with a rank head, so an adapter cannot be merged "
                           "into it; merge into the checkpoint first, then export with --rank-head")
    if arch not in GGUF_ARCH_NAMES:
        raise ProrankError(f"{base_gguf}: architecture {arch!r} is not supported here (llama, qwen2)")
    n_layers = int(_field(reader, f"{arch}.block_count"))
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    n_head_kv = int(_field(reader, f"{arch}.attention.head_count_kv") or n_head)
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, GGUF_ARCH_NAMES[arch]), n_layers)

    # GGUF lists dimensions fastest first; numpy wants them the other way round.
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    pending = {}
    for hf_name, delta in adapter_deltas(adapter_dir).items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ProrankError(f"{adapter_dir}: adapter tensor {hf_name} has no GGUF name for {arch}")
        if name not in shapes or shapes[name] != delta.shape:
            raise ProrankError(f"{adapter_dir}: the delta of {hf_name} has shape {delta.shape}, the base "
                               f"{base_gguf.name} has {shapes.get(name, 'no such tensor')}")
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            delta = rotary_interleave(delta, n_head if ".attn_q." in name else n_head_kv)
        pending[name] = delta

    def merged():
        for tensor in reader.tensors:
            weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shapes[tensor.name])
            delta = pending.pop(tensor.name, None)
            weight = weight.astype(np.float32) if delta is None else weight + delta
            yield tensor.name, weight.astype(np.float16 if weight.ndim == 2 else np.float32), None

    contract = ScoringContract.load(adapter_dir)
    with staged(output_path) as partial:
        rewrite_gguf(reader, partial, gguf.LlamaFileType.MOSTLY_F16, merged(), {GGUF_CONTRACT_KEY: contract.to_json()})
        os.replace(partial, output_path)
    return output_path
