"""The onnx backend (backends/onnx_backend.py): bad artifact files, device and provider choice, the Reranker picking
it from a path, and scoring without torch."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import ONNX_PARITY_ATOL, mixed_length_pairs, onnx_backend, torch_fp32_backend  # noqa: E402

from prorank_edge.backends.base import CPU_CALL_COST_TOKENS  # noqa: E402
from prorank_edge.errors import ProrankError  # noqa: E402

# ---- bad input -------------------------------------------------------------------------------------------

def test_corrupt_model_file_names_the_file(tiny_qwen2_onnx, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen2_onnx, broken)
    (broken / "model.onnx").write_bytes(b"garbage" * 1000)
    with pytest.raises(ProrankError, match=re.escape(str(broken / "model.onnx"))):
        onnx_backend(broken)


def test_missing_tokenizer_is_reported(tiny_qwen2_onnx, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_qwen2_onnx / "model.onnx", bare / "model.onnx")
    with pytest.raises(ProrankError, match="tokenizer.json"):
        onnx_backend(bare / "model.onnx")


def test_device_and_provider_choice(tiny_qwen2_onnx):
    backend = onnx_backend(tiny_qwen2_onnx, device="cpu", threads=1)
    assert backend.describe() == {"backend": "onnx", "providers": ["CPUExecutionProvider"], "threads": 1,
                                  "quant": "fp32", "model": str(tiny_qwen2_onnx / "model.onnx"),
                                  "prefix_graphs": True}
    assert backend.padding_call_cost == CPU_CALL_COST_TOKENS  # rows are padded: batches cut by padding cost
    with pytest.raises(ProrankError, match="unknown device"):
        onnx_backend(tiny_qwen2_onnx, device="tpu")
    with pytest.raises(ProrankError, match="not available"):
        onnx_backend(tiny_qwen2_onnx, providers=["NoSuchExecutionProvider"])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProrankError, match="no CUDA support"):
            onnx_backend(tiny_qwen2_onnx, device="cuda")


# ---- integration -----------------------------------------------------------------------------------------

def test_reranker_picks_the_onnx_backend(tiny_qwen2_onnx, tiny_qwen2_dir):
    from prorank_edge import Reranker

    documents = [doc for _, doc in mixed_length_pairs(6)]
    query = "what does a reranker do"
    with Reranker(str(tiny_qwen2_onnx), batch_size=4) as reranker:
        assert reranker.backend.name == "onnx"
        results = reranker.rank(query, documents)
    reference = torch_fp32_backend(tiny_qwen2_dir)
    expected = reference.score_batch(reference.prompts.build(query, documents))
    assert [r["corpus_id"] for r in results] == list(np.argsort(-expected, kind="stable"))
    assert np.allclose([r["score"] for r in results], np.sort(expected)[::-1], atol=ONNX_PARITY_ATOL)


def test_onnx_backend_runs_without_torch(tiny_qwen2_onnx):
    """The edge promise: scoring an artifact imports neither torch nor transformers."""
    code = (
        "import sys\n"
        "from prorank_edge import Reranker\n"
        f"r = Reranker({str(tiny_qwen2_onnx)!r})\n"
        "print(r.predict([('q', 'a document')])[0])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch or transformers imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert np.isfinite(float(result.stdout.strip().splitlines()[-1]))
