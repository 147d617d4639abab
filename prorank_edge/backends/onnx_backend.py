"""The edge backend: an exported ONNX scoring graph run by onnxruntime, tokenized by `tokenizers`.

It imports neither torch nor transformers, so a box with only `prorank-edge[onnx]` installed can rerank.
The artifact (see prorank_edge.export.onnx_export) maps left-padded ids and mask straight to scores; an
artifact that also has the prefix reuse graphs (prefix.onnx, suffix.onnx) computes each query's shared prompt
prefix once and scores only the rest of every prompt against its keys/values.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..contract import ScoringContract, left_pad, right_pad
from ..devices import int8_sums_may_saturate, parse_device
from ..errors import ProrankError
from ..formats import (
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


def weights_fingerprint(folder: Path) -> dict:
    """Size and a sampled hash of the files that hold model.onnx's weights (model.onnx, and model.onnx.data when
    the model is over 2 GiB). prefix.onnx and suffix.onnx read their weights at byte offsets inside them, so a
    rewritten model.onnx must be caught at load, not read as wrong weights; the head and tail 1 MiB and the size
    catch any rewrite in about a millisecond, where hashing a 500 MB file would take a second."""
    import hashlib

    digest, sizes = hashlib.sha256(), {}
    for path in (folder / ONNX_MODEL_FILENAME, folder / ONNX_EXTERNAL_DATA_FILENAME):
        if not path.is_file():
            continue
        size = path.stat().st_size
        sizes[path.name] = size
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(0, size - (1 << 20)))
            digest.update(handle.read(1 << 20))
    return {"sizes": sizes, "sha256_head_tail": digest.hexdigest()}


def reuse_scores(suffix_session, past: Sequence[np.ndarray], suffixes: Sequence[Sequence[int]]) -> np.ndarray:
    """Scores of prefix + suffix prompts from the suffix graph, given the prefix graph's (keys, values)."""
    batch = len(suffixes)
    # The graph takes one past row per suffix: one copy per call, layers x batch x P keys and values, small next
    # to the suffixes' compute (the prefix is a few dozen tokens, a suffix up to hundreds).
    expanded = [np.ascontiguousarray(np.broadcast_to(kv, (kv.shape[0], batch, *kv.shape[2:]))) for kv in past]
    ids, mask = right_pad(suffixes)
    feed = dict(zip(ONNX_SUFFIX_INPUT_NAMES, (*expanded, ids, mask)))
    (scores,) = suffix_session.run([ONNX_OUTPUT_NAME], feed)
    return np.asarray(scores, dtype=np.float32).reshape(-1)


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
        if self.export_info.get("quant") == "w8a8" and int8_sums_may_saturate():
            # A per-machine fact, so it is told at load, not decided at export (export/onnx_int8.py says why).
            warnings.warn(f"{folder}: a w8a8 artifact on a CPU without VNNI: onnxruntime's u8 x s8 kernel adds "
                          "products in saturating int16 here, which can move scores; the int8 level has no such "
                          "limit", RuntimeWarning, stacklevel=2)

        self.threads = int(threads) if threads else None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        requested = resolve_providers(device, providers)
        self.session = _load_session(self.model_file, options, requested, ONNX_INPUT_NAMES, (ONNX_OUTPUT_NAME,))
        # Prefix reuse needs both graphs; an artifact exported before them has neither and scores whole prompts.
        reuse_files = [folder / ONNX_PREFIX_MODEL_FILENAME, folder / ONNX_SUFFIX_MODEL_FILENAME]
        present = [f.is_file() for f in reuse_files]
        if any(present) and not all(present):
            missing = reuse_files[present.index(False)]
            raise ProrankError(f"{missing}: missing; the prefix reuse graphs {ONNX_PREFIX_MODEL_FILENAME} and "
                               f"{ONNX_SUFFIX_MODEL_FILENAME} come as a pair (delete both to score without reuse)")
        self.prefix_session = self.suffix_session = None
        if all(present):
            self.prefix_session = _load_session(reuse_files[0], options, requested, (ONNX_PREFIX_INPUT_NAME,),
                                                ONNX_PREFIX_OUTPUT_NAMES)
            self.suffix_session = _load_session(reuse_files[1], options, requested, ONNX_SUFFIX_INPUT_NAMES,
                                                (ONNX_OUTPUT_NAME,))
        recorded = (self.export_info.get("prefix_reuse") or {}).get("weights_fingerprint")
        if all(present) and recorded is not None and recorded != weights_fingerprint(folder):
            raise ProrankError(f"{folder}: {ONNX_MODEL_FILENAME} has changed since export, and "
                               f"{ONNX_PREFIX_MODEL_FILENAME} / {ONNX_SUFFIX_MODEL_FILENAME} read their weights from "
                               "inside it; export the artifact again, or delete those two files to score whole prompts")
        self.reuses_prefix = all(present)
        # The last prefix's keys/values: a query's candidates fill several batches, its prefix runs once.
        self._prefix: tuple[tuple[int, ...], list[np.ndarray]] | None = None
        on_gpu = self.session.get_providers()[0] == CUDA
        # Eager attention keeps [batch, heads, seq, seq] fp32 scores per layer; bound them on the CPU.
        self.max_batch_tokens = 1 << 17 if on_gpu else 1 << 14

    def score_batch(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        if self.session is None:
            raise ProrankError("this ONNX backend is closed")
        ids, mask = left_pad(token_ids)
        (scores,) = self.session.run([ONNX_OUTPUT_NAME], dict(zip(ONNX_INPUT_NAMES, (ids, mask))))
        total = int(mask.sum())
        self.count_tokens(total, total)
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def score_with_prefix(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]]) -> np.ndarray:
        """The prefix graph once per distinct prefix (its keys/values kept for the next call), the suffix graph
        per batch; counted as the torch backend counts."""
        # An empty suffix has no token to read a score at (the Reranker never makes one; other callers might).
        if not self.reuses_prefix or not len(prefix) or not all(len(s) for s in suffixes):
            return super().score_with_prefix(prefix, suffixes)
        if self.session is None:
            raise ProrankError("this ONNX backend is closed")
        key = tuple(int(i) for i in prefix)
        lengths = [len(s) for s in suffixes]
        computed = sum(lengths)
        if self._prefix is None or self._prefix[0] != key:
            ids = np.asarray([key], dtype=np.int64)
            past = self.prefix_session.run(list(ONNX_PREFIX_OUTPUT_NAMES), {ONNX_PREFIX_INPUT_NAME: ids})
            self._prefix = (key, past)
            computed += len(key)
        scores = reuse_scores(self.suffix_session, self._prefix[1], suffixes)
        self.count_tokens(len(key) * len(suffixes) + sum(lengths), computed)
        return scores

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "providers": self.session.get_providers() if self.session is not None else [],
            # None: onnxruntime's default (one thread per physical core)
            "threads": self.threads,
            "quant": self.export_info.get("quant"),
            "model": str(self.model_file),
            # the artifact has prefix.onnx and suffix.onnx (a query's shared prefix is computed once)
            "prefix_graphs": self.reuses_prefix,
        }

    def close(self) -> None:
        self.session = self.prefix_session = self.suffix_session = self._prefix = None


def _load_session(path: Path, options, providers: list, inputs: Sequence[str], outputs: Sequence[str]):
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProrankError(f"{path}: cannot load this ONNX model ({reason})") from None
    found_inputs = {i.name for i in session.get_inputs()}
    found_outputs = {o.name for o in session.get_outputs()}
    if not set(inputs) <= found_inputs or not set(outputs) <= found_outputs:
        raise ProrankError(
            f"{path}: not a prorank-edge scoring graph (inputs {sorted(found_inputs)}, outputs "
            f"{sorted(found_outputs)}; expected inputs {', '.join(inputs)} and outputs {', '.join(outputs)}); "
            "export one with `prorank-edge export --format onnx`"
        )
    return session


def _read_export_info(path: Path) -> dict:
    """export_info.json is descriptive only; a bare model.onnx without one still scores."""
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ProrankError(f"{path}: unreadable ({exc})") from None
    return info if isinstance(info, dict) else {}
