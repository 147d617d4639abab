"""An exported artifact's files, read and checked once for every engine that runs them: an ONNX artifact
(onnxruntime, OpenVINO) or an OpenVINO IR artifact (OpenVINO; the same graphs, inputs and outputs). Plain Python
and numpy: neither engine is imported here."""

from __future__ import annotations

import hashlib
import json
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import ScoringContract, left_pad, right_pad
from ..errors import ProrankError
from ..formats import (
    ONNX_EXPORT_INFO_FILENAME,
    ONNX_EXTERNAL_DATA_FILENAME,
    ONNX_MODEL_FILENAME,
    ONNX_PREFIX_MODEL_FILENAME,
    ONNX_SUFFIX_INPUT_NAMES,
    ONNX_SUFFIX_MODEL_FILENAME,
    OPENVINO_GRAPH_FILENAMES,
    OPENVINO_WEIGHTS_FILENAME,
    TOKENIZER_FILENAME,
)
from .base import CPU_CALL_COST_TOKENS, ScoringBackend


@dataclass
class OnnxArtifact:
    model_file: Path
    tokenizer: object
    contract: ScoringContract
    export_info: dict
    #: (prefix.onnx, suffix.onnx) when the artifact has the prefix reuse graphs; None: whole prompts only
    reuse_files: tuple[Path, Path] | None
    #: "onnx", or "openvino" for IR graphs (model.xml, prefix.xml, suffix.xml) sharing one model.bin
    kind: str = "onnx"

    @property
    def folder(self) -> Path:
        return self.model_file.parent

    def check_reuse_weights(self) -> None:
        """The reuse graphs read their weights inside model.onnx: a model.onnx rewritten since export would give
        them wrong weights. Called once model.onnx itself has loaded, so a broken file is named as broken."""
        if self.kind != "onnx":  # each IR graph names its constants' offsets in model.bin itself
            return
        recorded = (self.export_info.get("prefix_reuse") or {}).get("weights_fingerprint")
        if self.reuse_files and recorded is not None and recorded != weights_fingerprint(self.folder):
            raise ProrankError(f"{self.folder}: {ONNX_MODEL_FILENAME} has changed since export, and "
                               f"{ONNX_PREFIX_MODEL_FILENAME} / {ONNX_SUFFIX_MODEL_FILENAME} read their weights "
                               "from inside it; export the artifact again, or delete those two files to score "
                               "whole prompts")


def read_artifact(model_path: str | Path, contract: ScoringContract | None = None,
                  ir: bool = False) -> OnnxArtifact:
    """model.onnx (or the given .onnx file), its tokenizer and contract, and the reuse graphs if both are there;
    every missing or stale file raises one line naming it. ir: a folder with model.xml (OpenVINO IR) is read
    too, its graphs in place of the .onnx ones."""
    from tokenizers import Tokenizer

    path = Path(model_path)
    names = {name: name for name in (ONNX_MODEL_FILENAME, ONNX_PREFIX_MODEL_FILENAME, ONNX_SUFFIX_MODEL_FILENAME)}
    kind = "onnx"
    if ir and (path.suffix == ".xml" or path.is_dir() and not (path / ONNX_MODEL_FILENAME).is_file()
                                           and (path / OPENVINO_GRAPH_FILENAMES[ONNX_MODEL_FILENAME]).is_file()):
        names, kind = OPENVINO_GRAPH_FILENAMES, "openvino"
    model_file = path if path.is_file() else path / names[ONNX_MODEL_FILENAME]
    folder = model_file.parent
    if not model_file.is_file():
        raise ProrankError(f"{model_file}: no such {'ONNX' if kind == 'onnx' else 'OpenVINO'} model file")
    if kind == "openvino" and not (folder / OPENVINO_WEIGHTS_FILENAME).is_file():
        raise ProrankError(f"{folder / OPENVINO_WEIGHTS_FILENAME}: missing; the OpenVINO graphs read their weights "
                           "from it")
    tokenizer_file = folder / TOKENIZER_FILENAME
    if not tokenizer_file.is_file():
        raise ProrankError(f"{tokenizer_file}: missing; an artifact needs its tokenizer beside {model_file.name}")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # the Rust loader raises a bare Exception
        raise ProrankError(f"{tokenizer_file}: cannot read this tokenizer ({exc})") from None
    export_info = _read_export_info(folder / ONNX_EXPORT_INFO_FILENAME)
    # Prefix reuse needs both graphs; an artifact exported before them has neither and scores whole prompts.
    reuse = (folder / names[ONNX_PREFIX_MODEL_FILENAME], folder / names[ONNX_SUFFIX_MODEL_FILENAME])
    present = [f.is_file() for f in reuse]
    if any(present) and not all(present):
        missing = reuse[present.index(False)]
        raise ProrankError(f"{missing}: missing; the prefix reuse graphs {reuse[0].name} and {reuse[1].name} come "
                           "as a pair (delete both to score without reuse)")
    return OnnxArtifact(model_file, tokenizer, contract or ScoringContract.load(folder), export_info,
                        reuse if all(present) else None, kind)


def weights_fingerprint(folder: Path) -> dict:
    """Size and a sampled hash of the files that hold model.onnx's weights (model.onnx, and model.onnx.data when
    the model is over 2 GiB). prefix.onnx and suffix.onnx read their weights at byte offsets inside them, so a
    rewritten model.onnx must be caught at load, not read as wrong weights; the head and tail 1 MiB and the size
    catch any rewrite in about a millisecond, where hashing a 500 MB file would take a second."""
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


def suffix_feed(past: Sequence[np.ndarray], suffixes: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """The suffix graph's inputs for prefix + suffix prompts, given the prefix graph's (keys, values)."""
    batch = len(suffixes)
    # The graph takes one past row per suffix: one copy per call, layers x batch x P keys and values, small next
    # to the suffixes' compute (the prefix is a few dozen tokens, a suffix up to hundreds).
    expanded = [np.ascontiguousarray(np.broadcast_to(kv, (kv.shape[0], batch, *kv.shape[2:]))) for kv in past]
    ids, mask = right_pad(suffixes)
    return dict(zip(ONNX_SUFFIX_INPUT_NAMES, (*expanded, ids, mask)))


def check_graph_io(path: Path, found_inputs: set[str], found_outputs: set[str], inputs: Sequence[str],
                   outputs: Sequence[str]) -> None:
    """A graph without the scoring inputs and outputs is not one of ours: say so, and how to make one."""
    if not set(inputs) <= found_inputs or not set(outputs) <= found_outputs:
        raise ProrankError(
            f"{path}: not a prorank-edge scoring graph (inputs {sorted(found_inputs)}, outputs "
            f"{sorted(found_outputs)}; expected inputs {', '.join(inputs)} and outputs {', '.join(outputs)}); "
            "export one with `prorank-edge export --format onnx`"
        )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_export_info(path: Path) -> dict:
    """export_info.json is descriptive only; a bare model.onnx without one still scores."""
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ProrankError(f"{path}: unreadable ({exc})") from None
    return info if isinstance(info, dict) else {}


class ArtifactBackend(ScoringBackend):
    """What every engine of an ONNX artifact shares: batching, the prefix reuse protocol and token counts; an
    engine supplies how it runs the three graphs."""

    padding_call_cost = CPU_CALL_COST_TOKENS  # rows are padded to the batch's longest; an engine on a GPU unsets it

    def __init__(self, artifact: OnnxArtifact, max_length: int | None):
        super().__init__(artifact.tokenizer, artifact.contract, max_length)
        self.artifact = artifact
        self.model_file = artifact.model_file
        self.export_info = artifact.export_info
        self.reuses_prefix = artifact.reuse_files is not None
        # The last prefix's keys/values: a query's candidates fill several batches, its prefix runs once.
        self._prefix: tuple[tuple[int, ...], list[np.ndarray]] | None = None
        self.closed = False

    @abstractmethod
    def run_model(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """model.onnx: left-padded ids and mask in, one score per row out."""

    @abstractmethod
    def run_prefix(self, ids: np.ndarray) -> list[np.ndarray]:
        """prefix.onnx: one prefix row in, its (keys, values) out."""

    @abstractmethod
    def run_suffix(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """suffix.onnx: the prefix's keys/values and right-padded suffixes in, one score per row out."""

    def _check_open(self) -> None:
        if self.closed:
            raise ProrankError(f"this {self.name} backend is closed")

    def score_batch(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        self._check_open()
        ids, mask = left_pad(token_ids)
        scores = self.run_model(ids, mask)
        total = int(mask.sum())
        self.count_tokens(total, total)
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def score_with_prefix(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]]) -> np.ndarray:
        """The prefix graph once per distinct prefix (its keys/values kept for the next call), the suffix graph
        per batch; counted as the torch backend counts."""
        # An empty suffix has no token to read a score at (the Reranker never makes one; other callers might).
        if not self.reuses_prefix or not len(prefix) or not all(len(s) for s in suffixes):
            return super().score_with_prefix(prefix, suffixes)
        self._check_open()
        key = tuple(int(i) for i in prefix)
        lengths = [len(s) for s in suffixes]
        computed = sum(lengths)
        if self._prefix is None or self._prefix[0] != key:
            self._prefix = (key, self.run_prefix(np.asarray([key], dtype=np.int64)))
            computed += len(key)
        scores = self.run_suffix(suffix_feed(self._prefix[1], suffixes))
        self.count_tokens(len(key) * len(suffixes) + sum(lengths), computed)
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "quant": self.export_info.get("quant"),
            "model": str(self.model_file),
            # the artifact has prefix.onnx and suffix.onnx (a query's shared prefix is computed once)
            "prefix_graphs": self.reuses_prefix,
        }

    def close(self) -> None:
        self.closed = True
        self._prefix = None
