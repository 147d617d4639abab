"""The numpy GGUF merge (gguf_adapter.py): without torch the default model is SmolLM2's GGUF with the packaged
adapter merged in, scoring like torch; an adapter for another model is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import ADAPTER_PAIRS, fine_tune  # noqa: E402

from prorank_edge.adapter import make_adapter  # noqa: E402
from prorank_edge.errors import ProrankError  # noqa: E402
from prorank_edge.reranker import Reranker  # noqa: E402

EDGE_SCRIPT = r"""
import json, sys
sys.modules["torch"] = sys.modules["transformers"] = None  # an edge box: the gguf extra only
from prorank_edge.models import resolve_model
from prorank_edge.reranker import Reranker
source = resolve_model("default")
with Reranker() as reranker:
    scores = reranker.predict(json.loads(sys.argv[1]))
print(json.dumps({"kind": source.kind, "path": str(source.path), "scores": [float(s) for s in scores]}))
"""


@pytest.mark.slow
def test_the_default_model_without_torch_is_the_same_reranker_on_llama_cpp(smollm2_dir, tmp_path):
    """Without torch the packaged adapter is merged into an f16 GGUF with numpy; it must score like torch."""
    import os
    import subprocess
    import sys

    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    pairs = ADAPTER_PAIRS + [("IL-6 (p<0.05) rose 3.5-fold?",
                              "Interleukin 6 rose 3.5-fold in 12 of 40 patients (p<0.05).")]
    with Reranker(backend="torch", device="cpu", dtype="float32") as reference:
        expected = reference.predict(pairs)
    env = dict(os.environ, PRORANK_EDGE_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", EDGE_SCRIPT, json.dumps(pairs)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["kind"] == "gguf" and "applying the default reranker's adapter" in done.stderr
    got = np.array(result["scores"])
    # f16 weights against fp32: the drift of an f16 export, far below the adapter's own effect (> 0.1).
    assert np.abs(got - expected).max() < 0.05, (got, expected)
    assert list(np.argsort(got)) == list(np.argsort(expected))


def test_an_adapter_for_another_model_is_refused_by_the_gguf_merge(tiny_llama_dir, smollm2_dir, tmp_path):
    pytest.importorskip("gguf")
    from prorank_edge.gguf_adapter import apply_adapter_to_gguf
    from prorank_edge.models import smollm2_gguf_path

    adapter = tmp_path / "adapter"
    make_adapter(tiny_llama_dir, fine_tune(tiny_llama_dir, tmp_path / "tuned", 2), adapter, rank=2)
    output = tmp_path / "out.gguf"
    with pytest.raises(ProrankError, match="shape"):
        apply_adapter_to_gguf(smollm2_gguf_path(), adapter, output)
    assert not output.exists() and not list(tmp_path.glob(".out.gguf*"))
