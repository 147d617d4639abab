"""The edge backend: an exported ONNX scoring graph run by onnxruntime, tokenized by `tokenizers`.

It imports neither torch nor transformers, so a box with only `prorank-edge[onnx]` installed can rerank.
The artifact (see prorank_edge.export.onnx_export) maps left-padded ids and mask straight to scores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..contract import ScoringContract, left_pad
from ..devices import parse_device
from ..errors import ProrankError
from ..formats import (
    ONNX_EXPORT_INFO_FILENAME,
    ONNX_INPUT_NAMES,
    ONNX_MODEL_FILENAME,
    ONNX_OUTPUT_NAME,
    TOKENIZER_FILENAME,
)
from .base import ScoringBackend

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def resolve_providers(device: str | None = "auto", providers: Sequence | None = None) -> list:
    """Explicit onnxruntime providers for a device name, so a missing GPU is an error, not a silent CPU run."""
    available = ort.get_available_providers()
    if providers:
        missing = [p for p in providers if (p[0] if isinstance(p, (tuple, list)) else p) not in available]
        if missing:
            raise ProrankError(f"onnxruntime provider(s) {missing} are not available here; available: {available}")
        return list(providers)
    # "auto" means CPU: onnxruntime-gpu without a working CUDA setup logs a load error and silently falls back
    # to the CPU, so the GPU is used only when asked for by name, where a failure can be reported.
    parsed = parse_device(device)
    if parsed.kind != "cuda":
        return [CPU]
    if CUDA not in available:
        raise ProrankError(
            f"device {device!r} was asked for, but this onnxruntime has no CUDA support "
            "(install the `gpu` extra, onnxruntime-gpu, instead of onnxruntime)"
        )
    return [(CUDA, {"device_id": parsed.gpu_index}), CPU]


class OnnxBackend(ScoringBackend):
    name = "onnx"

    def __init__(self, model_path: str | Path, contract: ScoringContract | None = None, max_length: int | None = None,
                 device: str = "auto", threads: int | None = None, providers: Sequence | None = None):
        from tokenizers import Tokenizer

        path = Path(model_path)
        self.model_file = path if path.is_file() else path / ONNX_MODEL_FILENAME
        folder = self.model_file.parent
        if not self.model_file.is_file():
            raise ProrankError(f"{self.model_file}: no such ONNX model file")
        tokenizer_file = folder / TOKENIZER_FILENAME
        if not tokenizer_file.is_file():
            raise ProrankError(f"{tokenizer_file}: missing; an ONNX artifact needs its tokenizer beside model.onnx")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # the Rust loader raises a bare Exception
            raise ProrankError(f"{tokenizer_file}: cannot read this tokenizer ({exc})") from None
        super().__init__(tokenizer, contract or ScoringContract.load(folder), max_length)
        self.export_info = _read_export_info(folder / ONNX_EXPORT_INFO_FILENAME)

        self.threads = int(threads) if threads else None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        requested = resolve_providers(device, providers)
        try:
            self.session = ort.InferenceSession(str(self.model_file), sess_options=options, providers=requested)
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for bad files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ProrankError(f"{self.model_file}: cannot load this ONNX model ({reason})") from None
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if not set(ONNX_INPUT_NAMES) <= inputs or ONNX_OUTPUT_NAME not in outputs:
            raise ProrankError(
                f"{self.model_file}: not a prorank-edge scoring graph (inputs {sorted(inputs)}, outputs "
                f"{sorted(outputs)}; expected inputs input_ids, attention_mask and output score); "
                "export one with `prorank-edge export --format onnx`"
            )
        on_gpu = self.session.get_providers()[0] == CUDA
        # Eager attention keeps [batch, heads, seq, seq] fp32 scores per layer; bound them on the CPU.
        self.max_batch_tokens = 1 << 17 if on_gpu else 1 << 14

    def score_batch(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        if self.session is None:
            raise ProrankError("this ONNX backend is closed")
        ids, mask = left_pad(token_ids)
        (scores,) = self.session.run([ONNX_OUTPUT_NAME], dict(zip(ONNX_INPUT_NAMES, (ids, mask))))
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "providers": self.session.get_providers() if self.session is not None else [],
            # None: onnxruntime's default (one thread per physical core)
            "threads": self.threads,
            "quant": self.export_info.get("quant"),
            "model": str(self.model_file),
        }

    def close(self) -> None:
        self.session = None


def _read_export_info(path: Path) -> dict:
    """export_info.json is descriptive only; a bare model.onnx without one still scores."""
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ProrankError(f"{path}: unreadable ({exc})") from None
    return info if isinstance(info, dict) else {}
