"""GGUF q4_lora: 4-bit matrices on llama.cpp's fast q4_0 kernels, plus a LoRA file that makes them exact.

Two facts about the built-in reranker of its time (round 5, the default until 2026-12-07; today's has a 1-bit
part, which this level refuses) shape this level. Its base, SmolLM2-135M, comes from a Q4_1 file, so each
matrix sits exactly on the min-max 4-bit grid (blocks of 32 along the input); and the reranker is that base plus
a rank-48 delta smaller than one step of the grid. Measured on it (10 SciFact test queries x BM25 top 20,
per-query Spearman against torch fp32, Ice Lake Xeon):

- q4_k_m of the merged weights rounds the delta away (0.958); so do q4_0 (0.864) and iq4_nl (0.900);
- the base re-rounded to q4_0 or q4_k_m with the delta kept apart as a LoRA: 0.77 and 0.96 (a grid that is
  not the base's own is fresh 4-bit noise, which this 135M model does not tolerate);
- the base as Q4_1 plus the delta as a LoRA: 0.987, but llama.cpp has no repacked or tinyBLAS kernel for Q4_1
  on x86, so it ran at 0.4x the f16 file.

Hence this layout. A Q4_1 value d q + m (q in 0..15, d and m f16 per block) equals the q4_0 value d (q - 8) plus
the block's offset m + 8 d, so each matrix is written as q4_0 blocks holding the Q4_1 integers and scales
bit for bit, and the offsets travel in a LoRA beside it:

    NAME.gguf        every matrix in q4_0 (the Q4_1 quantization of the base); the token embedding (and an
                     untied LM head) merged, in f16; norms and biases merged, in f32
    NAME.lora.gguf   per matrix, a = [A; S] and b = [B, C], so that llama.cpp adds b (a x) = B A x + C S x:
                     B A the checkpoint's adapter delta (where it keeps its adapter, MERGED_ADAPTER_FOLDER),
                     C the block offsets and S the 0/1 matrix that sums each block of 32 inputs

so the file computes the Q4_1 base plus the exact delta, on q4_0's kernels (repacked on AVX2/AVX-512). A
checkpoint without an adapter gets the offsets alone: Q4_1's accuracy at q4_0's speed. The LoRA's factors are
stored in Q8_0, their rank padded to a multiple of 32 (Q8_0's block): in f32 or f16 they cost 25% of the
speed and gained no accuracy. Its alpha is 0, which llama.cpp reads as a scale of 1 whatever each tensor's
rank, so stock llama.cpp applies it as written: `llama-server -m NAME.gguf --lora NAME.lora.gguf`.

The embedding's delta is merged instead of carried in the LoRA: llama.cpp applies a LoRA on `token_embd` to
the tied LM head too, through a product whose shapes do not match (it would abort). It stays f16, like the head
of q8_0 files (formats.GGUF_HEAD_TYPES): the score is a difference of two logits of tens, and llama.cpp
rounds the last hidden state to 8 bits against a Q8_0 head, which on the tiny test models was the whole error
(max |score - fp32| 3.4e-2 with a Q8_0 head, 3.5e-3 with f16). Matrices whose input width is no multiple of 32
stay f16, merged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ProrankError
from ..formats import GGUF_LORA_SUFFIX, GGUF_SUFFIX

#: weights per block of Q4_0, Q4_1 and Q8_0
BLOCK = 32
#: bytes of a Q4_1 block (f16 d, f16 m, 16 bytes of nibbles); a Q4_0 block is the same without m
_Q4_1_BYTES = 20


def lora_path_for(output_path: str | Path) -> Path:
    """NAME.gguf -> NAME.lora.gguf, beside it."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name.removesuffix(GGUF_SUFFIX) + GGUF_LORA_SUFFIX)


def q4_1_as_q4_0(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q4_0 blocks as bytes [rows, cols / 32 x 18], offsets float32 [rows, cols / 32]) of a [rows, cols] matrix,
    such that dequantized q4_0 plus each block's offset equals the matrix's Q4_1 quantization exactly."""
    import gguf
    from gguf import quants

    rows, cols = weight.shape
    if cols % BLOCK:
        raise ProrankError(f"a matrix of {cols} columns has no 4-bit blocks of {BLOCK}")
    q4_1 = quants.quantize(np.ascontiguousarray(weight, dtype=np.float32), gguf.GGMLQuantizationType.Q4_1)
    q4_1 = q4_1.reshape(rows, cols // BLOCK, _Q4_1_BYTES)
    scale = q4_1[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    low = q4_1[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    q4_0 = np.concatenate([q4_1[..., 0:2], q4_1[..., 4:]], axis=-1).reshape(rows, -1)
    return np.ascontiguousarray(q4_0), low + 8 * scale


def block_sums(cols: int) -> np.ndarray:
    """S [cols / 32, cols]: S @ x sums each block of 32 inputs."""
    return np.kron(np.eye(cols // BLOCK, dtype=np.float32), np.ones((1, BLOCK), dtype=np.float32))


class Q4LoraEncoder:
    """Encodes the tensors of a GGUF export for q4_lora and collects the LoRA's factors on the way.

    low_rank: HF tensor name -> (B, A) of the checkpoint's adapter (adapter.adapter_factors), or empty."""

    def __init__(self, low_rank: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.low_rank = low_rank
        self.factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.kept_f16: list[str] = []

    def encode(self, hf_name: str, name: str, tensor: np.ndarray, permute_rows) -> tuple[np.ndarray, object]:
        """(data, ggml type or None for plain numpy) of one tensor, already in the GGUF layout; `permute_rows` is
        the row order the exporter applied to it (q/k rotary interleave), which the adapter's B must follow."""
        import gguf

        kind = gguf.GGMLQuantizationType
        if tensor.ndim != 2:
            return np.ascontiguousarray(tensor, dtype=np.float32), None
        if name in ("token_embd.weight", "output.weight"):
            return np.ascontiguousarray(tensor, dtype=np.float16), None  # the head one step finer: see the docstring
        if tensor.shape[1] % BLOCK:
            self.kept_f16.append(name)
            return np.ascontiguousarray(tensor, dtype=np.float16), None
        a_parts, b_parts = [], []
        if hf_name in self.low_rank:
            b, a = self.low_rank[hf_name]
            b = permute_rows(b)
            tensor = tensor - b @ a
            a_parts.append(a)
            b_parts.append(b)
        blocks, offsets = q4_1_as_q4_0(tensor)
        a_parts.append(block_sums(tensor.shape[1]))
        b_parts.append(offsets)
        self.factors[name] = (np.concatenate(a_parts, axis=0), np.concatenate(b_parts, axis=1))
        return blocks, kind.Q4_0


def write_lora(path: str | Path, architecture: str, factors: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """A llama.cpp LoRA adapter file: for each GGUF tensor name, `name.lora_a` = a [rank, in] and `name.lora_b` =
    b [out, rank] (numpy shapes), so that llama.cpp adds b @ (a @ x); Q8_0, ranks padded to a multiple of 32."""
    import gguf
    from gguf import quants

    q8_0 = gguf.GGMLQuantizationType.Q8_0
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)  # 0: scale 1 for every tensor, whatever its rank
    for name, (a, b) in factors.items():
        rank = a.shape[0]
        padded = -(-rank // BLOCK) * BLOCK
        a = np.concatenate([a, np.zeros((padded - rank, a.shape[1]), dtype=np.float32)])
        b = np.concatenate([b, np.zeros((b.shape[0], padded - rank), dtype=np.float32)], axis=1)
        for suffix, factor in ((".lora_a", a), (".lora_b", b)):
            writer.add_tensor(name + suffix, quants.quantize(np.ascontiguousarray(factor, dtype=np.float32), q8_0),
                              raw_dtype=q8_0)
    from .gguf_export import finish_gguf  # not at the top: gguf_export imports this module

    finish_gguf(writer)
