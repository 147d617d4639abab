"""GGUF q4_lora (export/gguf_lora.py): q4_0 matrices plus a LoRA file that restores Q4_1's block offsets and
keeps an adapter's delta exact; on tiny Qwen2 (tied head) and Llama (untied, rotary rows interleaved) models
whose base sits on the 4-bit grid as SmolLM2's does, and on the built-in model (slow)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from conftest import (  # noqa: E402
    grid_base_and_merged,
    grid_base_and_one_bit,
    mixed_length_pairs,
    requires_torch,
    scifact_gguf_pairs,
    torch_fp32_backend,
)

from prorank_edge.errors import ProrankError  # noqa: E402
from prorank_edge.formats import GGUF_LORA_KEY, MERGED_ADAPTER_FOLDER  # noqa: E402


def test_q4_0_blocks_plus_offsets_are_the_q4_1_quantization_exactly():
    import gguf
    from gguf import quants

    from prorank_edge.export.gguf_lora import block_sums, q4_1_as_q4_0

    weight = np.random.default_rng(0).standard_normal((6, 96)).astype(np.float32)
    blocks, offsets = q4_1_as_q4_0(weight)
    kind = gguf.GGMLQuantizationType
    as_q4_0 = quants.dequantize(blocks, kind.Q4_0) + np.repeat(offsets, 32, axis=1)
    as_q4_1 = quants.dequantize(quants.quantize(weight, kind.Q4_1), kind.Q4_1)
    assert blocks.shape == (6, 3 * 18) and offsets.shape == (6, 3)
    assert np.abs(as_q4_0 - as_q4_1).max() < 1e-6 * np.abs(as_q4_1).max()
    x = np.arange(96, dtype=np.float32)
    assert np.array_equal(block_sums(96) @ x, x.reshape(3, 32).sum(1))
    with pytest.raises(ProrankError, match="no 4-bit blocks of 32"):
        q4_1_as_q4_0(weight[:, :40])


def _scores(backend, pairs):
    try:
        return backend.score_batch(backend.prompts.build_pairs(pairs))
    finally:
        backend.close()


def _gguf(path):
    from prorank_edge.backends.gguf_backend import GgufBackend

    return GgufBackend(path, device="cpu")


@requires_torch
@pytest.mark.parametrize("model", ["tiny_qwen2_dir", "tiny_llama_dir"])
def test_q4_lora_keeps_the_base_grid_and_the_adapter_exact(model, request, tmp_path, monkeypatch):
    """4-bit rounding of the merged weights loses the delta; q4_lora keeps both parts, so what is left is llama.cpp's
    8-bit rounding of the activations."""
    from scipy.stats import spearmanr

    from prorank_edge.export.gguf_export import export_gguf

    base, merged = grid_base_and_merged(request.getfixturevalue(model), tmp_path / "checkpoints")
    info = export_gguf(merged, tmp_path / "model.gguf", quant="q4_lora")
    lora = info["lora"]
    # every matrix of the body (7 x 2 layers) has offsets; the adapter's deltas (14, the embedding and Llama's
    # untied head, which are merged at f16) were read
    untied = model == "tiny_llama_dir"
    assert lora["tensors"] == 14 and lora["adapter_tensors"] == 15 + untied and not lora["kept_f16"]
    assert (tmp_path / "model.lora.gguf").is_file() and lora["path"] == str(tmp_path / "model.lora.gguf")
    types = _tensor_types(tmp_path / "model.gguf")
    assert {t for n, t in types.items() if n.startswith("blk.") and n.endswith("weight") and "norm" not in n} \
        == {"Q4_0"} and types["token_embd.weight"] == "F16"  # the head (tied) one step finer, as in q8_0 files
    # the merged weights rounded to 4 bits: llama.cpp's q4_k_m as it makes it, without the exporter's Q8_0 matrices
    monkeypatch.setattr("prorank_edge.export.gguf_export.GGUF_Q8_0_MATRICES", {})
    plain = export_gguf(merged, tmp_path / "q4_k_m.gguf", quant="q4_k_m")["path"]
    f16 = export_gguf(merged, tmp_path / "f16.gguf", quant="f16")["path"]

    pairs = mixed_length_pairs(16)
    reference = _scores(torch_fp32_backend(merged), pairs)
    ours = _scores(_gguf(tmp_path / "model.gguf"), pairs)
    rounded = _scores(_gguf(plain), pairs)
    half = _scores(_gguf(f16), pairs)
    error, rounded_error = np.abs(ours - reference).max(), np.abs(rounded - reference).max()
    spread = np.ptp(reference)
    print(f"\n{model} max |score - fp32| (spread {spread:.3f}): q4_lora {error:.3e}, q4_k_m {rounded_error:.3e}, "
          f"f16 {np.abs(half - reference).max():.3e}; Spearman q4_lora "
          f"{spearmanr(ours, reference).statistic:.4f}, q4_k_m {spearmanr(rounded, reference).statistic:.4f}")
    # random tiny models score within a fraction of one (spread above), so llama.cpp's 8-bit activations and
    # f16 head show; what matters is that the 4-bit rounding of the merged weights does not
    assert error < rounded_error / 3 and error < 20 * np.abs(half - reference).max()
    assert spearmanr(ours, reference).statistic > 0.93 > 0.6 > spearmanr(rounded, reference).statistic


def _tensor_types(path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


@requires_torch
def test_stock_llama_cpp_applies_the_lora_as_the_backend_does(tiny_qwen2_dir, tmp_path):
    """llama-cpp-python's own Llama class with lora_path (what llama-server's --lora does: scale 1) gives the
    backend's score; without the LoRA the file scores otherwise."""
    import llama_cpp

    from prorank_edge.backends.llama_runtime import captured_llama_log
    from prorank_edge.export.gguf_export import export_gguf

    _, merged = grid_base_and_merged(tiny_qwen2_dir, tmp_path / "checkpoints")
    export_gguf(merged, tmp_path / "model.gguf", quant="q4_lora")
    backend = _gguf(tmp_path / "model.gguf")
    ids = backend.prompts.build_pairs(mixed_length_pairs(3))
    positive, negative = backend.prompts.positive_token_id, backend.prompts.negative_token_id
    try:
        expected = backend.score_batch(ids)
    finally:
        backend.close()

    def stock_scores(lora_path):
        with captured_llama_log(llama_cpp):
            llm = llama_cpp.Llama(str(tmp_path / "model.gguf"), lora_path=lora_path, n_ctx=512, n_threads=2,
                                  logits_all=True, verbose=False)
        try:
            scores = []
            for prompt in ids:
                llm.reset()
                llm.eval(prompt)
                logits = llm.scores[llm.n_tokens - 1]
                scores.append(logits[positive] - logits[negative])
            return np.array(scores)
        finally:
            llm.close()

    with_lora = stock_scores(str(tmp_path / "model.lora.gguf"))
    without = stock_scores(None)
    print(f"\nstock llama.cpp vs backend: {np.abs(with_lora - expected).max():.2e}; "
          f"without the LoRA: {np.abs(without - expected).max():.2e}")
    assert np.abs(with_lora - expected).max() < 5e-3 * max(np.ptp(expected), 1.0)
    assert np.abs(without - expected).max() > 10 * np.abs(with_lora - expected).max()


@requires_torch
def test_q4_lora_files_fail_clearly_when_separated_or_misused(tiny_llama_dir, tmp_path):
    import gguf

    from prorank_edge import Reranker
    from prorank_edge.export.gguf_export import export_gguf

    model = tmp_path / "model.gguf"
    info = export_gguf(tiny_llama_dir, model, quant="q4_lora")  # no adapter: the offsets alone
    assert info["lora"]["adapter_tensors"] == 0 and info["lora"]["tensors"] == 14
    reader = gguf.GGUFReader(str(model))
    field = reader.fields[GGUF_LORA_KEY]
    assert bytes(field.parts[field.data[0]]).decode() == "model.lora.gguf"

    with Reranker(str(tmp_path)) as reranker:  # a folder with the pair: the model is the one that is not a LoRA
        assert reranker.describe()["lora"] == str(tmp_path / "model.lora.gguf")
    with pytest.raises(ProrankError, match="is the LoRA file of a q4_lora export"):
        _gguf(tmp_path / "model.lora.gguf")
    (tmp_path / "fresh.lora.gguf").write_bytes(b"someone else's file")
    with pytest.raises(ProrankError, match="fresh.lora.gguf already exists"):
        export_gguf(tiny_llama_dir, tmp_path / "fresh.gguf", quant="q4_lora")
    assert not (tmp_path / "fresh.gguf").exists()
    with pytest.raises(ProrankError, match="cannot be combined with q4_lora"):
        export_gguf(tiny_llama_dir, tmp_path / "rank.gguf", quant="q4_lora", rank_head=True)
    with pytest.raises(ProrankError, match="--smooth does not apply to q4_lora"):
        export_gguf(tiny_llama_dir, tmp_path / "smooth.gguf", quant="q4_lora", smoothing_alpha=0.5)

    shutil.move(tmp_path / "model.lora.gguf", tmp_path / "elsewhere.gguf")
    with pytest.raises(ProrankError, match="its LoRA file .*model.lora.gguf is missing"):
        _gguf(model)


@requires_torch
def test_q4_lora_refuses_a_checkpoint_with_a_one_bit_adapter(tiny_qwen2_dir, tmp_path):
    """A 1-bit part is full rank: no LoRA carries it and 4-bit rounding erases it, so the export says so before
    writing anything, instead of a file that quietly scores like the base."""
    from prorank_edge.export.gguf_export import export_gguf

    _, merged = grid_base_and_one_bit(tiny_qwen2_dir, tmp_path / "checkpoints", start_rank=None)
    with pytest.raises(ProrankError, match=r"1-bit part \(15 weights.*ONNX int4"):
        export_gguf(merged, tmp_path / "model.gguf", quant="q4_lora")
    assert not list(tmp_path.glob("model*"))


@pytest.mark.slow
def test_builtin_model_q4_lora_ranks_like_fp32_or_is_refused_for_a_one_bit_default(tmp_path, scifact_dir):
    """The built-in reranker (SmolLM2 on the Q4_1 grid plus the shipped adapter), 4 SciFact queries x 10. Since
    round 15 the default's adapter has a 1-bit part (a full fine-tune), which no LoRA carries: the export is
    refused, naming the levels that keep it, and writes nothing. A LoRA-only default (round 5) ranked here at
    per-query Spearman 0.99."""
    from scipy.stats import spearmanr

    from prorank_edge.adapter import merged_adapter_parts
    from prorank_edge.export.gguf_export import export_gguf
    from prorank_edge.models import default_model

    model_dir = default_model().path
    assert (model_dir / MERGED_ADAPTER_FOLDER).is_dir()
    if merged_adapter_parts(model_dir)[1]:
        with pytest.raises(ProrankError, match=r"1-bit part \(\d+ weights.*ONNX int4"):
            export_gguf(model_dir, tmp_path / "default.gguf", quant="q4_lora")
        assert not list(tmp_path.glob("default*"))
        return
    info = export_gguf(model_dir, tmp_path / "default.gguf", quant="q4_lora")
    assert info["lora"]["adapter_tensors"] > 200 and info["lora"]["tensors"] == 210
    pairs = scifact_gguf_pairs(scifact_dir, n_queries=4, negatives=9)
    reference = _scores(torch_fp32_backend(model_dir), pairs)
    ours = _scores(_gguf(tmp_path / "default.gguf"), pairs)
    rhos = [spearmanr(reference[i:i + 10], ours[i:i + 10]).statistic for i in range(0, len(pairs), 10)]
    print(f"\nbuilt-in q4_lora: per-query Spearman {np.mean(rhos):.4f}, max drift {np.abs(ours - reference).max():.3f}")
    assert np.mean(rhos) > 0.97
