"""Format facts shared by writers and readers: file names, graph I/O names, GGUF keys, quantization levels.

One place for every name that an exporter writes and a backend, the bench or the CLI reads back (in the
manner of gguf-py's constants.py), so the two sides cannot drift apart. Plain Python: importing it costs
nothing and needs no extra.
"""

from __future__ import annotations

# ---- files beside a model ---------------------------------------------------------------------------------
CONTRACT_FILENAME = "prorank_contract.json"
TOKENIZER_FILENAME = "tokenizer.json"
CHECKPOINT_CONFIG_FILENAME = "config.json"
ADAPTER_WEIGHTS_FILENAME = "adapter.safetensors"
ADAPTER_INFO_FILENAME = "adapter.json"
#: a checkpoint merged from a base and an adapter (adapter.apply_adapter) keeps that adapter in this subfolder, so
#: the int4 exporter can quantize the base alone and run the adapter's low-rank delta beside it, exactly
MERGED_ADAPTER_FOLDER = "adapter"

# ---- ONNX artifact (a folder) -----------------------------------------------------------------------------
ONNX_MODEL_FILENAME = "model.onnx"
ONNX_EXTERNAL_DATA_FILENAME = "model.onnx.data"
ONNX_EXPORT_INFO_FILENAME = "export_info.json"
#: left-padded [batch, seq] int64 inputs -> one float32 score per row
ONNX_INPUT_NAMES = ("input_ids", "attention_mask")
ONNX_OUTPUT_NAME = "score"

# ---- GGUF artifact (one file) -----------------------------------------------------------------------------
GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"
#: the scoring contract as JSON, label token ids filled in
GGUF_CONTRACT_KEY = "prorank.contract"
#: the checkpoint's tokenizer.json, so the runtime tokenizes exactly like torch
GGUF_TOKENIZER_JSON_KEY = "prorank.tokenizer_json"
#: present in a file exported with --rank-head: its residual stream is rotated (export/rank_head.py), so the
#: ProRank score is channel 0 of the final normed hidden state; the value names the method
GGUF_RANK_HEAD_KEY = "prorank.rank_head"
RANK_HEAD_KIND = "residual-rotation"
#: llama-server's rerank prompt: tokenizer.chat_template.<this name>, with {query} and {document}
GGUF_RERANK_TEMPLATE_NAME = "rerank"
#: a q4_lora file (export/gguf_lora.py) names its LoRA file, which sits beside it, under this key; the backend
#: applies it, and stock llama.cpp takes it as `--lora`
GGUF_LORA_KEY = "prorank.lora_file"
GGUF_LORA_SUFFIX = ".lora.gguf"

# ---- quantization levels ----------------------------------------------------------------------------------
# onnx int8: 8-bit weights, fp32 compute (accurate, not faster); w8a8: 8-bit weights and activations on
# integer GEMMs (export/onnx_int8.py: faster, less exact).
# gguf bf16: bf16 matrices (head and embedding f16), for CPUs with AVX-512 BF16 or AMX, where llama.cpp multiplies
# them natively (AMD EPYC, 2 cores, built-in model: 1.25-1.43x the f16 file, 1.15x torch fp32); elsewhere f16.
# gguf q4_lora: q4_0 matrices plus a LoRA file that restores Q4_1's offsets and keeps an adapter's delta exact
# (export/gguf_lora.py).
# openvino int8: the onnx fp32 artifact's graphs as OpenVINO IR, 8-bit weights and activations quantized by NNCF
# (export/openvino_export.py), for OpenVINO's integer kernels.
QUANTS = {"onnx": ("fp32", "fp16", "int8", "w8a8", "int4"), "gguf": ("f16", "bf16", "q8_0", "q4_k_m", "q4_lora"),
          "openvino": ("int8",)}
#: GGUF levels written by gguf-py alone, without llama.cpp's quantizer
GGUF_UNQUANTIZED = ("f16", "bf16")
# The 8-bit levels: the smallest that keep ranking close to fp32 (Spearman on SmolLM2: onnx int8 0.998, gguf
# q8_0 0.996 with smoothing; the 4-bit levels 0.989 and 0.978).
DEFAULT_QUANT = {"onnx": "int8", "gguf": "q8_0", "openvino": "int8"}
#: llama.cpp file type (llama_ftype name) of each GGUF level
GGUF_FTYPES = {
    "f16": "LLAMA_FTYPE_MOSTLY_F16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
# GGUF level -> ggml type (GGML_TYPE_*) of the LM head, which is the token embedding when the two are tied.
# The score is the difference of two head rows dotted with the last hidden state, and llama.cpp also
# quantizes that hidden state to the weights' block type, so a head quantized like the body puts an error
# proportional to the logits (tens) on a score whose spread within a query is a fraction of one. Keeping the
# head one step finer costs ~26 MB on SmolLM2 and measurably restores rank agreement (docs/export.md).
GGUF_HEAD_TYPES = {"q8_0": "GGML_TYPE_F16", "q4_k_m": "GGML_TYPE_Q8_0", "q4_lora": "GGML_TYPE_F16"}
#: GGUF level -> tensor-name parts of the matrices it keeps at Q8_0 after llama.cpp's quantizer (which takes no
#: per-tensor types through its C API). On the built-in model q4_k_m's ranking loss is spread over the matrices:
#: per-query Spearman against torch fp32 (10 SciFact test queries x BM25 top 20) 0.954 as llama.cpp makes it;
#: one class at Q8_0: ffn_down 0.968, gate/up 0.966, q/k/v 0.964, attn_output 0.954; ffn_down and q/k/v together
#: 0.978 at 124 MB against 109 MB (gate/up with ffn_down: 0.976 at 138 MB). benchmarks/results/gguf/
#: q4_k_m_overrides_probe.py; an importance-weighted rounding of the same tensors did not help (0.950).
GGUF_Q8_0_MATRICES = {"q4_k_m": (".ffn_down.", ".attn_q.", ".attn_k.", ".attn_v.")}
#: weights per quantization scale for ONNX int8/int4: the GGUF block size, which keeps the grid of checkpoints
#: converted from GGUF Q4_0/Q4_1 files (a block of 128 would not reproduce it)
ONNX_BLOCK_SIZE = 32
#: torch precisions the bench measures (fp16 is left out: CPUs have no fast fp16 matmul)
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
#: backends that take --dtype: their bench variants are TORCH_DTYPES precisions (openvino-fp32/bf16 run the onnx fp32
#: artifact at that precision), or an exported level of their own (openvino-int8, float parts at the auto dtype)
DTYPE_BACKENDS = ("torch", "openvino")
#: every backend-level variant the bench knows, in report order
BENCH_FORMATS = tuple(f"torch-{d}" for d in TORCH_DTYPES) + tuple(
    f"{fmt}-{q}" for fmt in ("onnx", "gguf") for q in QUANTS[fmt] if q != "fp16"
) + tuple(f"openvino-{d}" for d in (*TORCH_DTYPES, *QUANTS["openvino"]))

# ---- architectures ----------------------------------------------------------------------------------------
#: transformers architecture -> gguf-py MODEL_ARCH name, for the GGUF exporter
GGUF_ARCHITECTURES = {"Qwen2ForCausalLM": "QWEN2", "LlamaForCausalLM": "LLAMA"}
#: GGUF general.architecture -> gguf-py MODEL_ARCH name, for reading a GGUF back (the adapter merge)
GGUF_ARCH_NAMES = {"qwen2": "QWEN2", "llama": "LLAMA"}

# ---- ONNX prefix reuse (two more graphs in the same folder; model.onnx is unchanged) ----------------------
#: prefix ids [1, P] -> the prompt prefix's keys and values, every layer stacked
ONNX_PREFIX_MODEL_FILENAME = "prefix.onnx"
ONNX_PREFIX_INPUT_NAME = "prefix_ids"
#: [layers, batch, kv_heads, P, head_dim] float32 each
ONNX_PREFIX_OUTPUT_NAMES = ("present_keys", "present_values")
#: past keys/values (shaped as the prefix graph's outputs, batch rows repeated) and right-padded suffix ids
#: and mask [batch, S] int64 (positions continue at P) -> score [batch] float32
ONNX_SUFFIX_MODEL_FILENAME = "suffix.onnx"
ONNX_SUFFIX_INPUT_NAMES = ("past_keys", "past_values", "suffix_ids", "suffix_mask")

# ---- OpenVINO IR artifact (a folder; same graph inputs and outputs as the ONNX artifact) ------------------
#: the ONNX graph each IR graph is made from -> its IR file
OPENVINO_GRAPH_FILENAMES = {ONNX_MODEL_FILENAME: "model.xml", ONNX_PREFIX_MODEL_FILENAME: "prefix.xml",
                            ONNX_SUFFIX_MODEL_FILENAME: "suffix.xml"}
#: the one weights file all three IR graphs read (each distinct constant stored once)
OPENVINO_WEIGHTS_FILENAME = "model.bin"
