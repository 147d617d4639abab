"""Export a Qwen2 or Llama ProRank checkpoint to one self-contained GGUF file for llama.cpp.

The converter is our own and covers only the two architectures ProRank uses. It writes f16 with the `gguf`
package, then `llama_model_quantize` (llama-cpp-python) makes q8_0 or q4_k_m, since the numpy quantizers
in `gguf` cannot make K-quants; q4_k_m then gets its most sensitive matrices (ffn_down, q/k/v) back at Q8_0
from the same f16 file (formats.GGUF_Q8_0_MATRICES: llama.cpp's C API takes no per-tensor types).
Beside llama.cpp's usual keys, two keys make the file a complete reranker:

    prorank.contract        the scoring contract as JSON, label token ids filled in
    prorank.tokenizer_json  the checkpoint's tokenizer.json, so the runtime tokenizes exactly like torch

q4_lora is written by this module alone (no llama.cpp): q4_0 matrices and a LoRA file beside the GGUF
(export/gguf_lora.py). So is bf16 (bf16 matrices rounded from fp32), the fast unquantized file on CPUs with
AVX-512 BF16 or AMX.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from ..contract import PromptBuilder, ScoringContract
from ..devices import usable_cores
from ..errors import MissingExtraError, ProrankError
from ..formats import (
    GGUF_ARCHITECTURES,
    GGUF_CONTRACT_KEY,
    GGUF_FTYPES,
    GGUF_HEAD_TYPES,
    GGUF_LORA_KEY,
    GGUF_Q8_0_MATRICES,
    GGUF_RANK_HEAD_KEY,
    GGUF_RERANK_TEMPLATE_NAME,
    GGUF_TOKENIZER_JSON_KEY,
    GGUF_UNQUANTIZED,
    QUANTS,
    RANK_HEAD_KIND,
)
from ..staging import staged
from . import gguf_lora
from .parity import builtin_pairs
from .smoothing import DEFAULT_ALPHAS, calibration_maxima, smooth_tensor, smoothing_scales

# Probe text for checking llama.cpp's own tokenizer against the HF one (digits, contractions, newlines,
# punctuation and a chat marker are where pre-tokenizers differ).
_TOKENIZER_PROBE = (
    "<|im_start|>user\nquery: What's 12345 x 67? They'll say  it's\tfine.\n\ndocument: IL-6 (p<0.05) rose 3.5-fold!"
)


def export_gguf(model_dir: str | Path, output_path: str | Path, quant: str = "f16", overwrite: bool = False,
                max_length: int | None = None, smoothing_alpha: float | None = None, rank_head: bool = False) -> dict:
    """Convert the checkpoint in `model_dir` to a GGUF reranker at `output_path`; returns what was written.

    quant: "f16", "bf16" (matrices in bf16, the head and embedding f16: for CPUs with AVX-512 BF16 or AMX), "q8_0",
    "q4_k_m" or "q4_lora" (which also writes NAME.lora.gguf beside the file).
    max_length: stored in the file's contract (default: the checkpoint's).
    smoothing_alpha: channel smoothing before quantization (export/smoothing.py); None: DEFAULT_ALPHAS for the
    quantized levels, none for f16; 0 turns it off.
    rank_head: rotate the model so that llama.cpp's rank pooling (`llama-server --reranking`) returns the ProRank
    score, and store the ProRank prompt as its rerank template (export/rank_head.py).
    The file is written under a temporary name beside `output_path` and renamed only when complete.
    """
    if quant not in QUANTS["gguf"]:
        raise ProrankError(f"unknown GGUF quantization {quant!r}; choose one of: {', '.join(QUANTS['gguf'])}")
    model_dir, output_path = Path(model_dir), Path(output_path)
    if not (model_dir / "config.json").is_file():
        raise ProrankError(f"{model_dir}: not a transformers checkpoint (no config.json)")
    if output_path.exists() and not overwrite:
        raise ProrankError(f"{output_path} already exists; pass overwrite=True (--overwrite) to replace it")
    if output_path.suffix != ".gguf":
        raise ProrankError(f"{output_path}: a GGUF file name must end in .gguf")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    arch = _architecture(config, model_dir)
    lora_path = gguf_lora.lora_path_for(output_path) if quant == "q4_lora" else None
    if lora_path is not None:
        if rank_head:
            raise ProrankError("--rank-head cannot be combined with q4_lora: the rotation moves the weights off the "
                               "4-bit grid that q4_lora keeps exact")
        if smoothing_alpha:
            raise ProrankError("--smooth does not apply to q4_lora, whose matrices keep their 4-bit grid exactly")
        if lora_path.exists() and not overwrite:
            raise ProrankError(f"{lora_path} already exists; pass overwrite=True (--overwrite) to replace it")
        from ..adapter import merged_adapter_parts

        low_rank, one_bit = merged_adapter_parts(model_dir) or ({}, {})
        if one_bit:
            # Its +-s rows are full rank: no LoRA carries them, and 4-bit rounding of the merged weights erases them.
            raise ProrankError(f"{model_dir}: its adapter has a 1-bit part ({len(one_bit)} weights, `train adapter "
                               "--one-bit`), which q4_lora cannot keep; export bf16, f16 or q8_0, or ONNX int4, "
                               "which keeps it exactly")
    elif quant not in GGUF_UNQUANTIZED and not _has_llama_cpp():  # fail before the slow conversion
        raise MissingExtraError("GGUF quantization (q8_0, q4_k_m)", "gguf", "llama_cpp")
    if smoothing_alpha is None:
        smoothing_alpha = DEFAULT_ALPHAS.get(quant, 0.0)
    if not 0.0 <= smoothing_alpha <= 1.0:
        raise ProrankError(f"smoothing alpha {smoothing_alpha} is outside [0, 1]")

    started = time.perf_counter()
    tokenizer_path = model_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ProrankError(f"{model_dir}: no tokenizer.json (a fast `tokenizers` tokenizer is needed)")
    tokenizer_text = tokenizer_path.read_text(encoding="utf-8")
    from tokenizers import Tokenizer

    prompts = PromptBuilder(Tokenizer.from_str(tokenizer_text), ScoringContract.load(model_dir), max_length)

    scales = {}
    if smoothing_alpha > 0:
        # Calibrated on the built-in pairs: the outlier channels belong to the model, not to one text.
        maxima, weight_maxima = calibration_maxima(model_dir, builtin_pairs(), prompts.contract.max_length)
        scales = smoothing_scales(maxima, weight_maxima, config, smoothing_alpha)

    lora_info = None
    q8_0_matrices = 0
    with staged(output_path) as partial:
        fallback = None
        if lora_path is not None:
            # The LoRA is renamed into place first (inner block), so a complete NAME.gguf always has its LoRA.
            with staged(lora_path) as lora_partial:
                encoder = gguf_lora.Q4LoraEncoder(low_rank)
                pre = _write_unquantized(model_dir, config, arch, tokenizer_text, prompts, partial, rank_head=False,
                                         encoder=encoder, metadata={GGUF_LORA_KEY: lora_path.name})
                gguf_lora.write_lora(lora_partial, _gguf_arch_name(arch), encoder.factors)
                os.replace(lora_partial, lora_path)
            lora_info = {"path": str(lora_path), "bytes": lora_path.stat().st_size,
                         "tensors": len(encoder.factors), "adapter_tensors": len(encoder.low_rank),
                         "kept_f16": encoder.kept_f16}
        else:
            unquantized = partial.with_name(partial.name + ".f16") if quant not in GGUF_UNQUANTIZED else partial
            pre = _write_unquantized(model_dir, config, arch, tokenizer_text, prompts, unquantized, scales, rank_head,
                                     bf16=quant == "bf16")
            if quant not in GGUF_UNQUANTIZED:
                fallback = _quantize(unquantized, partial, quant)
                if quant in GGUF_Q8_0_MATRICES:
                    q8_0_matrices = _requantize_to_q8_0(partial, unquantized, GGUF_Q8_0_MATRICES[quant])
                unquantized.unlink()
        tokenizer_check = _check_with_llama_cpp(partial, prompts.tokenizer) if _has_llama_cpp() else None
        rank_check = _check_rank_pooling(partial, prompts) if rank_head and _has_llama_cpp() else None
        os.replace(partial, output_path)

    return {
        "path": str(output_path),
        "quant": quant,
        "architecture": config["architectures"][0],
        "bytes": output_path.stat().st_size,
        "pre_tokenizer": pre,
        "llama_tokenizer_matches_hf": tokenizer_check,
        "quant_fallback": fallback,
        "q8_0_matrices": q8_0_matrices,
        "head_type": GGUF_HEAD_TYPES.get(quant, "GGML_TYPE_F16").removeprefix("GGML_TYPE_").lower(),
        "smoothing_alpha": smoothing_alpha,
        "rank_head": rank_head,
        "rank_pooling_max_diff": rank_check,
        "lora": lora_info,
        "contract": prompts.contract.to_dict(),
        "seconds": round(time.perf_counter() - started, 2),
        "source": str(model_dir),
    }


# ---- f16 conversion -------------------------------------------------------------------------------------

def _has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _architecture(config: dict, model_dir: Path) -> str:
    names = config.get("architectures") or [config.get("model_type", "unknown")]
    if names[0] not in GGUF_ARCHITECTURES:
        raise ProrankError(
            f"{model_dir}: architecture {names[0]} cannot be exported to GGUF; supported: "
            f"{', '.join(GGUF_ARCHITECTURES)}"
        )
    return GGUF_ARCHITECTURES[names[0]]


def _gguf_arch_name(arch: str) -> str:
    import gguf

    return gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch)]


def _write_unquantized(model_dir: Path, config: dict, arch: str, tokenizer_text: str, prompts: PromptBuilder,
                       path: Path, scales: dict | None = None, rank_head: bool = False, encoder=None,
                       metadata: dict[str, str] | None = None, bf16: bool = False) -> str:
    """Write the f16 GGUF (norms and biases stay f32, as llama.cpp expects); returns the pre-tokenizer name.

    bf16: the matrices in bf16 instead, rounded from fp32 (not from f16); the embedding and LM head stay f16, whose
    finer mantissa keeps the score head (the difference of two of its rows) as exact as in the f16 file.
    scales: channel smoothing to apply on the way (`smoothing.smoothing_scales`), or None.
    rank_head: rotate for llama.cpp's rank pooling (`rank_head.rotate_for_rank_head`).
    encoder: writes each tensor in its own types instead (gguf_lora.Q4LoraEncoder). metadata: more string keys."""
    import gguf

    contract = prompts.contract

    model_arch = getattr(gguf.MODEL_ARCH, arch)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[model_arch])
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)

    writer.add_name(config.get("_name_or_path") or model_dir.name)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(n_layers)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    _add_rope_scaling(writer, config, model_dir)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if encoder else gguf.LlamaFileType.MOSTLY_BF16 if bf16
                         else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    vocab_size = int(config["vocab_size"])
    tokenizer = json.loads(tokenizer_text)
    names = gguf.get_tensor_name_map(model_arch, n_layers)
    tied = bool(config.get("tie_word_embeddings", False))
    tensors = ((name, smooth_tensor(name, tensor, scales or {})) for name, tensor in _read_tensors(model_dir))
    extra_tokens: dict[int, str] = {}
    if rank_head:
        from . import rank_head as head

        rotated = head.rotate_for_rank_head(dict(tensors), config, contract.positive_token_id,
                                            contract.negative_token_id)
        tied = False  # the LM head now differs from the embedding
        separator = None
        if len(prompts.separator_ids) == 1:
            marker_id = head.free_token_id(tokenizer, vocab_size)
            head.copy_token_row(rotated, prompts.separator_ids[0], marker_id)
            vocab_size = max(vocab_size, marker_id + 1)
            extra_tokens[marker_id] = separator = head.SEPARATOR_TOKEN
        tensors = rotated.items()
        writer.add_pooling_type(gguf.PoolingType.RANK)
        template = rerank_template(contract, separator)
        writer.add_chat_template([{"name": GGUF_RERANK_TEMPLATE_NAME, "template": template}])
        writer.add_string(GGUF_RANK_HEAD_KEY, RANK_HEAD_KIND)
    pre = _add_tokenizer(writer, gguf, model_dir, tokenizer, vocab_size, extra_tokens)
    writer.add_string(GGUF_CONTRACT_KEY, contract.to_json())
    writer.add_string(GGUF_TOKENIZER_JSON_KEY, tokenizer_text)
    for key, value in (metadata or {}).items():
        writer.add_string(key, value)

    for hf_name, tensor in tensors:
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue  # recomputed by llama.cpp / the same matrix as token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ProrankError(f"{model_dir}: tensor {hf_name} has no GGUF name for {config['architectures'][0]}")
        def permute_rows(rows, name=name):
            if arch == "LLAMA" and (".attn_q." in name or ".attn_k." in name):
                return rotary_interleave(rows, n_head if ".attn_q." in name else n_head_kv)
            return rows

        tensor = permute_rows(tensor)
        if name == "token_embd.weight" and tensor.shape[0] != vocab_size:
            raise ProrankError(f"{model_dir}: embedding rows {tensor.shape[0]} differ from vocab_size {vocab_size}")
        if encoder is not None:
            data, raw_dtype = encoder.encode(hf_name, name, tensor, permute_rows)
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
            continue
        if bf16 and tensor.ndim == 2 and name not in ("token_embd.weight", "output.weight"):
            bf16_type = gguf.GGMLQuantizationType.BF16
            writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(tensor, dtype=np.float32), bf16_type),
                              raw_dtype=bf16_type)
            continue
        dtype = np.float16 if tensor.ndim == 2 else np.float32
        writer.add_tensor(name, np.ascontiguousarray(tensor, dtype=dtype))
    finish_gguf(writer)
    return pre


def finish_gguf(writer) -> None:
    """Write a GGUFWriter's header, metadata and tensors, and close its file (on a failure too)."""
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def rerank_template(contract: ScoringContract, separator: str | None = None) -> str:
    """The ProRank prompt with llama-server's {query} and {document} placeholders (no instruction, no cut).

    llama-server fills the whole texts in and tokenizes the result as one string, where a query or document that
    ends in punctuation would merge with the newline after it (".\n" is one token) while ProRank tokenizes each
    piece alone. `separator`: a token text standing for the contract's separator (rank_head.SEPARATOR_TOKEN),
    which llama.cpp matches before it tokenizes the rest, so the pieces are split exactly as ProRank splits them.
    """
    query = contract.query_template.replace("{query}", "\0")
    document = contract.document_template.replace("{document}", "\1")
    sep = separator or contract.separator
    text = contract.prefix + query + sep + document + sep + contract.task_prompt + contract.suffix
    for placeholder in ("{query}", "{document}"):
        if placeholder in text:
            raise ProrankError(f"the contract's own text contains {placeholder}, which llama-server would replace")
    return text.replace("\0", "{query}").replace("\1", "{document}")


def _add_rope_scaling(writer, config: dict, model_dir: Path) -> None:
    scaling = config.get("rope_scaling")
    if not scaling:
        return
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        return
    if kind == "default":
        return
    raise ProrankError(f"{model_dir}: rope_scaling type {kind!r} is not supported by the GGUF exporter")


def rotary_interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder q/k rows from HF's rotate-half layout to the interleaved pairs llama.cpp's Llama rope uses.

    Within each head HF pairs dimension i with i + d/2; llama.cpp pairs 2i with 2i + 1.
    """
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _read_tensors(model_dir: Path):
    """(name, float32 array) for every tensor of the checkpoint's safetensors files (bf16 included)."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = [p.name for p in sorted(model_dir.glob("*.safetensors"))]
    if not files:
        raise ProrankError(f"{model_dir}: no .safetensors weights (save the model with safe_serialization=True)")
    for file in files:
        with safe_open(str(model_dir / file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name).float().numpy()


# ---- tokenizer ------------------------------------------------------------------------------------------

def _add_tokenizer(writer, gguf, model_dir: Path, tokenizer: dict, vocab_size: int,
                   extra_tokens: dict[int, str] | None = None) -> str:
    """Byte-level BPE tokenizer metadata in llama.cpp's "gpt2" form; returns the pre-tokenizer name.

    extra_tokens: id -> text of tokens that are not in tokenizer.json, written as user-defined tokens (matched
    whole by llama.cpp's tokenizer)."""
    model = tokenizer.get("model", {})
    if model.get("type") != "BPE":
        raise ProrankError(f"{model_dir}: only byte-level BPE tokenizers can be exported to GGUF "
                           f"(this one is {model.get('type')})")
    tokens: list[str | None] = [None] * vocab_size
    types = [gguf.TokenType.NORMAL] * vocab_size
    for text, token_id in model["vocab"].items():
        if token_id < vocab_size:
            tokens[token_id] = text
    for added in tokenizer.get("added_tokens", []):
        token_id = added["id"]
        if token_id >= vocab_size:
            raise ProrankError(f"{model_dir}: added token {added['content']!r} (id {token_id}) is outside the "
                               f"model's vocabulary of {vocab_size}")
        tokens[token_id] = added["content"]
        types[token_id] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    for token_id, text in (extra_tokens or {}).items():
        tokens[token_id] = text
        types[token_id] = gguf.TokenType.USER_DEFINED
    # Checkpoints pad the embedding past the tokenizer (Qwen2.5: 151,936 rows, 151,665 tokens).
    for token_id, text in enumerate(tokens):
        if text is None:
            tokens[token_id] = f"[PAD{token_id}]"
            types[token_id] = gguf.TokenType.UNUSED

    pre = _pre_tokenizer_name(tokenizer.get("pre_tokenizer"), model_dir)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    special.add_special_token.setdefault("bos", False)  # ProRank prompts never start with BOS
    special.add_to_gguf(writer, quiet=True)
    if not special.merges:
        raise ProrankError(f"{model_dir}: the BPE tokenizer has no merges")
    return pre


# The pre-tokenizer regexes verbatim (llama.cpp recognises them by exact text), hence the long lines.
_QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501
_LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501


def _pre_tokenizer_name(pre_tokenizer: dict | None, model_dir: Path) -> str:
    """llama.cpp's name for the tokenizer.json pre-tokenizer, recognised by structure.

    Qwen2.5: Split(Qwen2 regex) + ByteLevel; SmolLM2: Digits(individual) + ByteLevel(GPT-2 regex);
    a GGUF-converted SmolLM2 or GPT-2: ByteLevel(GPT-2 regex) alone.
    """
    steps = (pre_tokenizer or {}).get("pretokenizers") if (pre_tokenizer or {}).get("type") == "Sequence" \
        else [pre_tokenizer] if pre_tokenizer else []
    kinds = [step.get("type") for step in steps]
    regexes = [step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"]
    byte_level_regex = any(step.get("type") == "ByteLevel" and step.get("use_regex", True) for step in steps)
    if regexes == [_QWEN2_REGEX] and kinds == ["Split", "ByteLevel"]:
        return "qwen2"
    if regexes == [_LLAMA3_REGEX] and kinds == ["Split", "ByteLevel"]:
        return "llama-bpe"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level_regex:
        return "smollm"
    if kinds == ["ByteLevel"] and byte_level_regex:
        return "gpt-2"
    raise ProrankError(f"{model_dir}: pre-tokenizer {json.dumps(pre_tokenizer)[:200]} has no llama.cpp equivalent "
                       "known to this exporter")


# ---- llama.cpp: quantization and checks -------------------------------------------------------------

def _llama_cpp():
    try:
        from ..backends.llama_runtime import import_llama_cpp

        return import_llama_cpp()
    except ImportError:
        raise MissingExtraError("GGUF quantization (q8_0, q4_k_m)", "gguf", "llama_cpp") from None


def _quantize(source: Path, target: Path, quant: str) -> str | None:
    """Quantize with llama.cpp; returns its note on tensors whose rows do not fit the K-quant block size."""
    from ..backends.llama_runtime import captured_llama_log, llama_error_reason

    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, GGUF_FTYPES[quant])
    params.nthread = usable_cores()
    # With tied embeddings llama.cpp applies output_tensor_type to token_embd (checked with 0.3.36).
    params.output_tensor_type = getattr(llama_cpp, GGUF_HEAD_TYPES[quant])
    with captured_llama_log(llama_cpp) as log:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0 or not target.is_file():
        raise ProrankError(f"llama.cpp could not quantize {source} to {quant} (status {status})"
                           f"{llama_error_reason(log)}")
    # e.g. SmolLM2's 576 columns are no multiple of 256, so most q4_K tensors fall back to q5_0.
    notes = [m.group(1) for _, text in log if (m := re.search(r"(\d+ of \d+ tensor\(s\)) required fallback", text))]
    return f"{notes[-1]} fell back to a non-K quant type" if notes else None


def _requantize_to_q8_0(quantized: Path, source: Path, parts: tuple[str, ...]) -> int:
    """Rewrite `quantized` with its matrices whose names contain one of `parts` at Q8_0, rounded by gguf-py from
    the same (smoothed) f16 file llama.cpp quantized; everything else byte for byte. Returns how many."""
    import gguf

    from ..gguf_adapter import _field, rewrite_gguf

    reader = gguf.GGUFReader(str(quantized))
    originals = {t.name: t for t in gguf.GGUFReader(str(source)).tensors}
    mixed = quantized.with_name(quantized.name + ".q8_0")
    q8_0 = gguf.GGMLQuantizationType.Q8_0
    chosen = {t.name for t in reader.tensors if len(t.shape) == 2 and any(part in t.name for part in parts)}

    def tensors(reader):
        for tensor in reader.tensors:
            if tensor.name in chosen:
                weight = np.asarray(originals[tensor.name].data, dtype=np.float32)
                yield tensor.name, gguf.quants.quantize(weight, q8_0), q8_0
            else:
                yield tensor.name, np.asarray(tensor.data), tensor.tensor_type

    rewrite_gguf(reader, mixed, int(_field(reader, "general.file_type")), tensors(reader))
    del reader  # its memory map, before the file under it is replaced
    os.replace(mixed, quantized)
    return len(chosen)


def _check_with_llama_cpp(path: Path, tokenizer) -> bool:
    """Load the written file's vocabulary with llama.cpp: the prorank keys must have survived quantization,
    and the result says whether llama.cpp's own tokenizer agrees with tokenizer.json on a probe text."""
    from ..backends.llama_runtime import LlamaVocabTokenizer, captured_llama_log, gguf_metadata_string, load_gguf_model

    llama_cpp = _llama_cpp()
    model = load_gguf_model(llama_cpp, path, vocab_only=True)
    try:
        missing = [key for key in (GGUF_CONTRACT_KEY, GGUF_TOKENIZER_JSON_KEY)
                   if gguf_metadata_string(llama_cpp, model, key) is None]
        if missing:
            raise ProrankError(f"{path}: llama.cpp does not see the metadata {', '.join(missing)}")
        ours = LlamaVocabTokenizer(llama_cpp, model).encode(_TOKENIZER_PROBE).ids
        return ours == tokenizer.encode(_TOKENIZER_PROBE, add_special_tokens=False).ids
    finally:
        with captured_llama_log(llama_cpp):
            llama_cpp.llama_model_free(model)


def _check_rank_pooling(path: Path, prompts: PromptBuilder, pairs: int = 12) -> float:
    """max |rank pooling - logit score| of the written file on built-in pairs; raises where llama.cpp's rank
    pooling does not read the score (a build that pools the first token for this architecture gives every
    prompt the same value)."""
    from ..backends.gguf_backend import GgufBackend
    from ..backends.llama_runtime import captured_llama_log, load_gguf_model, rank_pooling_scores

    llama_cpp = _llama_cpp()
    ids = prompts.build_pairs(builtin_pairs()[:pairs])
    backend = GgufBackend(path, device="cpu")
    try:
        logits = backend.score_batch(ids)
    finally:
        backend.close()
    model = load_gguf_model(llama_cpp, path)
    try:
        pooled = np.array(rank_pooling_scores(llama_cpp, model, ids))
    finally:
        with captured_llama_log(llama_cpp):
            llama_cpp.llama_model_free(model)
    worst = float(np.abs(pooled - logits).max())
    # Half the spread of the scores: far beyond rounding (f16 SmolLM2: 0.023), well below a wrong read-out.
    if worst > 0.5 * max(float(np.ptp(logits)), 1e-3):
        raise ProrankError(f"{path}: llama.cpp's rank pooling does not return the ProRank score with this "
                           f"llama.cpp build (max difference {worst:.3f} from the logit scores; the build may pool "
                           "the first token for this architecture)")
    return round(worst, 5)
