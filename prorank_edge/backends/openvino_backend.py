"""OpenVINO on an exported ONNX artifact: the same model.onnx (and prefix reuse graphs) that onnxruntime runs,
compiled by OpenVINO's CPU plugin; or on an OpenVINO int8 artifact (`export --format openvino`: the same three
graphs as IR with 8-bit weights and activations, sharing one model.bin). No torch, no onnxruntime:
`prorank-edge[openvino]` is enough.

Why a second engine for the same files: on a CPU with AMX (2 Xeon cores, built-in model, 20 SciFact queries x
BM25 top 20) OpenVINO in bf16 scored 29.4 docs/s on whole prompts, against 21.0 for torch bf16 and 19.1 for
onnxruntime's fastest level (w8a8, prefix cache on), at a per-query Spearman of 0.992 against torch fp32
(benchmarks/results/bench_amx/). onnxruntime has no bf16 GEMM on the CPU; OpenVINO runs bf16 on AMX.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openvino as ov

from ..contract import ScoringContract
from ..devices import cpu_has_native_bf16, parse_device
from ..errors import ProrankError
from ..formats import (
    ONNX_INPUT_NAMES,
    ONNX_OUTPUT_NAME,
    ONNX_PREFIX_INPUT_NAME,
    ONNX_PREFIX_OUTPUT_NAMES,
    ONNX_SUFFIX_INPUT_NAMES,
    OPENVINO_WEIGHTS_FILENAME,
)
from .onnx_artifact import ArtifactBackend, check_graph_io, first_line, read_artifact

#: --dtype -> OpenVINO's INFERENCE_PRECISION_HINT
PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def inference_precision(dtype: str | None) -> str:
    """auto: bf16 where the CPU computes it natively (AVX-512 BF16 or AMX), else f32; or the dtype asked for."""
    if dtype in (None, "", "auto"):
        return "bf16" if cpu_has_native_bf16() else "f32"
    if dtype not in PRECISIONS:
        raise ProrankError(f"dtype {dtype!r}: the openvino backend takes auto, {', '.join(PRECISIONS)}")
    return PRECISIONS[dtype]


class OpenVinoBackend(ArtifactBackend):
    name = "openvino"

    def __init__(self, model_path: str | Path, contract: ScoringContract | None = None, max_length: int | None = None,
                 device: str = "auto", threads: int | None = None, dtype: str = "auto"):
        if parse_device(device).kind == "cuda":
            raise ProrankError(f"device {device!r}: the openvino backend runs on the CPU; for a GPU use "
                               "--backend onnx (onnxruntime-gpu) or torch")
        super().__init__(read_artifact(model_path, contract, ir=True), max_length)
        self.threads = int(threads) if threads else None
        self.precision = inference_precision(dtype)
        # One stream, latency hint: a rerank call is one request at a time; NUM_STREAMS > 1 would split the cores.
        config = {"INFERENCE_PRECISION_HINT": self.precision, "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = str(self.threads)
        self._core, self._config = ov.Core(), config
        self.prefix_request = self.suffix_request = self._request = None
        if self.reuses_prefix:
            # Each compiled graph holds its own copy of the weights (the three together: 3.2 GB peak RSS for the
            # built-in model in bf16), and with the prefix cache on a rerank call runs only these two; model.onnx
            # is compiled when a whole prompt is first scored.
            prefix_file, suffix_file = self.artifact.reuse_files
            self.artifact.check_reuse_weights()
            self.prefix_request = _compile(self._core, prefix_file, config, (ONNX_PREFIX_INPUT_NAME,),
                                           ONNX_PREFIX_OUTPUT_NAMES)
            self.suffix_request = _compile(self._core, suffix_file, config, ONNX_SUFFIX_INPUT_NAMES,
                                           (ONNX_OUTPUT_NAME,))
        else:
            self._request = self.request
        # The graph's eager attention keeps [batch, heads, seq, seq] scores per layer, as in onnxruntime.
        self.max_batch_tokens = 1 << 14

    @property
    def request(self):
        """model.onnx's compiled graph, compiled on first use."""
        if self._request is None:
            self._request = _compile(self._core, self.model_file, self._config, ONNX_INPUT_NAMES,
                                     (ONNX_OUTPUT_NAME,))
        return self._request

    def run_model(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return _output(self.request, dict(zip(ONNX_INPUT_NAMES, (ids, mask))), ONNX_OUTPUT_NAME)

    def run_prefix(self, ids: np.ndarray) -> list[np.ndarray]:
        # Copies: the request's output tensors are overwritten by its next run.
        results = self.prefix_request.infer({ONNX_PREFIX_INPUT_NAME: ids})
        return [np.array(results[name]) for name in ONNX_PREFIX_OUTPUT_NAMES]

    def run_suffix(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return _output(self.suffix_request, feed, ONNX_OUTPUT_NAME)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "openvino_version": ov.__version__,
            "precision": self.precision,
            # None: OpenVINO's default (every core)
            "threads": self.threads,
        }

    def close(self) -> None:
        super().close()
        self._request = self.prefix_request = self.suffix_request = None


def _compile(core, path: Path, config: dict, inputs: Sequence[str], outputs: Sequence[str]):
    try:
        # An IR graph reads the artifact's shared weights file, not a .bin of its own name.
        compiled = core.compile_model(read_ir(core, path) if path.suffix == ".xml" else str(path), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError (and its own types) for files it cannot read
        raise ProrankError(f"{path}: OpenVINO cannot compile this model ({first_line(exc)})") from None
    check_graph_io(path, {n for i in compiled.inputs for n in i.get_names()},
                   {n for o in compiled.outputs for n in o.get_names()}, inputs, outputs)
    return compiled.create_infer_request()


def read_ir(core, xml: Path):
    """An IR graph of an openvino artifact; all of them read the one shared weights file beside them."""
    return core.read_model(str(xml), str(Path(xml).parent / OPENVINO_WEIGHTS_FILENAME))


def _output(request, feed: dict[str, np.ndarray], name: str) -> np.ndarray:
    return np.asarray(request.infer(feed)[name], dtype=np.float32).reshape(-1)
