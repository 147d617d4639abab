"""The edge backend: an exported ONNX scoring graph run by onnxruntime, tokenized by `tokenizers`.

It imports neither torch nor transformers, so a box with only `prorank-edge[onnx]` installed can rerank.
The artifact (see prorank_edge.export.onnx_export) maps left-padded ids and mask straight to scores; an
artifact that also has the prefix reuse graphs (prefix.onnx, suffix.onnx) computes each query's shared prompt
prefix once and scores only the rest of every prompt against its keys/values.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..contract import ScoringContract
from ..devices import int8_sums_may_saturate, parse_device
from ..errors import ProrankError
from ..formats import (
    ONNX_INPUT_NAMES,
    ONNX_OUTPUT_NAME,
    ONNX_PREFIX_INPUT_NAME,
    ONNX_PREFIX_OUTPUT_NAMES,
    ONNX_SUFFIX_INPUT_NAMES,
)
from .onnx_artifact import ArtifactBackend, check_graph_io, first_line, read_artifact

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


class OnnxBackend(ArtifactBackend):
    name = "onnx"

    def __init__(self, model_path: str | Path, contract: ScoringContract | None = None, max_length: int | None = None,
                 device: str = "auto", threads: int | None = None, providers: Sequence | None = None):
        super().__init__(read_artifact(model_path, contract), max_length)
        if self.export_info.get("quant") == "w8a8" and int8_sums_may_saturate():
            # A per-machine fact, so it is told at load, not decided at export (export/onnx_int8.py says why).
            warnings.warn(f"{self.artifact.folder}: a w8a8 artifact on a CPU without VNNI: onnxruntime's u8 x s8 "
                          "kernel adds products in saturating int16 here, which can move scores; the int8 level "
                          "has no such limit", RuntimeWarning, stacklevel=2)

        self.threads = int(threads) if threads else None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        requested = resolve_providers(device, providers)
        self.session = _load_session(self.model_file, options, requested, ONNX_INPUT_NAMES, (ONNX_OUTPUT_NAME,))
        self.prefix_session = self.suffix_session = None
        self.artifact.check_reuse_weights()
        if self.reuses_prefix:
            prefix_file, suffix_file = self.artifact.reuse_files
            self.prefix_session = _load_session(prefix_file, options, requested, (ONNX_PREFIX_INPUT_NAME,),
                                                ONNX_PREFIX_OUTPUT_NAMES)
            self.suffix_session = _load_session(suffix_file, options, requested, ONNX_SUFFIX_INPUT_NAMES,
                                                (ONNX_OUTPUT_NAME,))
        on_gpu = self.session.get_providers()[0] == CUDA
        # Eager attention keeps [batch, heads, seq, seq] fp32 scores per layer; bound them on the CPU.
        self.max_batch_tokens = 1 << 17 if on_gpu else 1 << 14
        if on_gpu:
            self.padding_call_cost = None

    def run_model(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (scores,) = self.session.run([ONNX_OUTPUT_NAME], dict(zip(ONNX_INPUT_NAMES, (ids, mask))))
        return scores

    def run_prefix(self, ids: np.ndarray) -> list[np.ndarray]:
        return self.prefix_session.run(list(ONNX_PREFIX_OUTPUT_NAMES), {ONNX_PREFIX_INPUT_NAME: ids})

    def run_suffix(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return reuse_scores(self.suffix_session, feed)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "providers": self.session.get_providers() if self.session is not None else [],
            # None: onnxruntime's default (one thread per physical core)
            "threads": self.threads,
        }

    def close(self) -> None:
        super().close()
        self.session = self.prefix_session = self.suffix_session = None


def reuse_scores(suffix_session, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The suffix graph's scores for a feed made by onnx_artifact.suffix_feed."""
    (scores,) = suffix_session.run([ONNX_OUTPUT_NAME], feed)
    return np.asarray(scores, dtype=np.float32).reshape(-1)


def _load_session(path: Path, options, providers: list, inputs: Sequence[str], outputs: Sequence[str]):
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for bad files
        raise ProrankError(f"{path}: cannot load this ONNX model ({first_line(exc)})") from None
    check_graph_io(path, {i.name for i in session.get_inputs()}, {o.name for o in session.get_outputs()}, inputs,
                   outputs)
    return session
