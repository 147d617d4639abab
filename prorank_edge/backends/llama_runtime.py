"""llama.cpp plumbing shared by the GGUF backend, the GGUF exporter and the bench: loading llama-cpp-python,
capturing its log, loading a model without crashing on a bad file, reading metadata, and its tokenizer.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import ProrankError
from ..formats import GGUF_MAGIC

# ggml's log levels (ggml.h); llama-cpp-python's own callback maps them off by one and prints warnings.
_GGML_LOG_LEVEL_ERROR = 4
_GGML_LOG_LEVEL_CONT = 5


def import_llama_cpp():
    """llama_cpp, with OpenMP told not to spin: torch may share the process and its cores."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import llama_cpp

    llama_cpp.llama_backend_init()
    return llama_cpp


@contextmanager
def captured_llama_log(llama_cpp):
    """Silence llama.cpp's logging for a block and collect its lines as (level, text)."""
    lines: list[tuple[int, str]] = []
    last_level = [0]

    @llama_cpp.llama_log_callback
    def capture(level, text, _user_data):
        if level != _GGML_LOG_LEVEL_CONT:
            last_level[0] = level
        if text:
            lines.append((last_level[0], text.decode("utf-8", errors="replace")))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp._logger import llama_log_callback

        llama_cpp.llama_log_set(llama_log_callback, ctypes.c_void_p(0))


def llama_error_reason(lines: list[tuple[int, str]]) -> str:
    """llama.cpp's error lines from a captured log, as a short parenthesised reason (or "")."""
    text = " ".join("".join(t for level, t in lines if level == _GGML_LOG_LEVEL_ERROR).split())
    return f" ({text[:300]})" if text else ""


def model_params(llama_cpp):
    """llama.cpp's default model parameters, with its repacked weight layouts only where
    `devices.llama_repack_choice` says they are safe on this CPU."""
    from ..devices import llama_repack_choice

    params = llama_cpp.llama_model_default_params()
    if hasattr(params, "use_extra_bufts"):
        params.use_extra_bufts = llama_repack_choice()[0]
    return params


def load_gguf_model(llama_cpp, path: Path, vocab_only: bool = False, n_gpu_layers: int = 0, main_gpu: int = 0):
    """A llama_model pointer; a file llama.cpp cannot read raises ProrankError naming it (no crash)."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ProrankError(f"{path}: cannot read the GGUF file ({exc.strerror})") from None
    if magic != GGUF_MAGIC:
        raise ProrankError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    params = model_params(llama_cpp)
    params.vocab_only = vocab_only
    params.n_gpu_layers = n_gpu_layers
    params.main_gpu = main_gpu
    with captured_llama_log(llama_cpp) as log:
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ProrankError(f"{path}: llama.cpp cannot load this GGUF file; it is corrupt, truncated or of an "
                           f"unsupported architecture{llama_error_reason(log)}")
    return model


def gguf_metadata_string(llama_cpp, model, key: str) -> str | None:
    """A string metadata value of a loaded model, any length (tokenizer.json is ~11 MB for Qwen2.5)."""
    size = llama_cpp.llama_model_meta_val_str(model, key.encode(), None, 0)
    if size < 0:
        return None
    buffer = ctypes.create_string_buffer(size + 1)
    llama_cpp.llama_model_meta_val_str(model, key.encode(), buffer, size + 1)
    return buffer.raw[:size].decode("utf-8")


class _Encoding:
    __slots__ = ("ids",)

    def __init__(self, ids: list[int]):
        self.ids = ids


class LlamaVocabTokenizer:
    """llama.cpp's own tokenizer behind the `tokenizers.Tokenizer` calls PromptBuilder makes.

    Special tokens written in the text (<|im_start|>) are parsed as such, as the HF tokenizer does.
    """

    def __init__(self, llama_cpp, model):
        self._llama_cpp = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(model)

    def encode(self, text: str, add_special_tokens: bool = False) -> _Encoding:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buffer = (self._llama_cpp.llama_token * capacity)()
            count = self._llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, capacity,
                                                   add_special_tokens, True)
            if count >= 0:
                return _Encoding(list(buffer[:count]))
            capacity = -count  # too small: llama.cpp says how many it needs

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[_Encoding]:
        return [self.encode(text, add_special_tokens) for text in texts]


def rank_pooling_scores(llama_cpp, model, token_ids: Sequence[Sequence[int]],
                        threads: int | None = None) -> list[float]:
    """What llama.cpp's rank pooling (`llama-server --reranking`) returns for each prompt: one decode per prompt
    in an embeddings context with pooling RANK, the first float of its sequence's pooled output."""
    from ..devices import usable_cores

    longest = max(len(ids) for ids in token_ids)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = longest
    params.n_seq_max = 1
    params.embeddings = True
    params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_RANK
    params.n_threads = params.n_threads_batch = threads or usable_cores()
    with captured_llama_log(llama_cpp) as log:
        ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise ProrankError(f"llama.cpp could not create a rank-pooling context{llama_error_reason(log)}")
    batch = llama_cpp.llama_batch_init(longest, 0, 1)
    try:
        memory = llama_cpp.llama_get_memory(ctx)
        scores = []
        for ids in token_ids:
            llama_cpp.llama_memory_clear(memory, False)
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, 1
                batch.seq_id[i][0] = 0
            batch.n_tokens = len(ids)
            with captured_llama_log(llama_cpp) as log:
                status = llama_cpp.llama_decode(ctx, batch)
            pooled = llama_cpp.llama_get_embeddings_seq(ctx, 0)
            if status != 0 or not pooled:
                raise ProrankError(f"llama.cpp rank pooling failed on a prompt of {len(ids)} tokens (status "
                                   f"{status}){llama_error_reason(log)}")
            scores.append(float(pooled[0]))
        return scores
    finally:
        with captured_llama_log(llama_cpp):
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)
