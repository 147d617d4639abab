"""Model resolution (models.py): the default model is SmolLM2 plus the packaged adapter, with its fusion weight;
its cache, and what a first run prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import ADAPTER_PAIRS, REPO, requires_torch  # noqa: E402

from prorank_edge.formats import ADAPTER_INFO_FILENAME, ADAPTER_WEIGHTS_FILENAME, MERGED_ADAPTER_FOLDER  # noqa: E402
from prorank_edge.reranker import Reranker  # noqa: E402


def test_the_default_model_is_smollm2_plus_the_packaged_adapter(smollm2_dir):
    from prorank_edge.contract import ScoringContract
    from prorank_edge.models import DEFAULT_ADAPTER_DIR, has_default_adapter, resolve_model

    if not has_default_adapter():
        pytest.fail(f"the packaged default adapter is missing from {DEFAULT_ADAPTER_DIR}")
    base, default = resolve_model("smollm2"), resolve_model("default")
    assert base.path == smollm2_dir and default.kind == "torch" and default.path != base.path
    contract = ScoringContract.load(default.path)
    info = json.loads((DEFAULT_ADAPTER_DIR / ADAPTER_INFO_FILENAME).read_text())
    # The merge keeps its adapter, which the int4 exporter reads (export/onnx_int4.py).
    kept = default.path / MERGED_ADAPTER_FOLDER / ADAPTER_WEIGHTS_FILENAME
    assert kept.read_bytes() == (DEFAULT_ADAPTER_DIR / ADAPTER_WEIGHTS_FILENAME).read_bytes()
    # The fusion weight was tuned on held-out training queries and travels in the contract.
    assert contract.extra["fusion_weight"] == info["dev"]["fusion_weight"]
    assert info["dev"]["split"] == "train"
    if info.get("sign_bits") == 1:
        # A 1-bit adapter (`train adapter --one-bit`) codes a full fine-tune as +-s per row; it is not the trained
        # model exactly, so what ships is the adapter itself, measured on dev as it is: it must rank at least as
        # well there as the model it codes (round 13: 0.7529 against 0.7517), less a draw of a query or two.
        dev = info["dev"]["ndcg@10"]
        assert dev["adapter"] >= dev["trained"] - 0.01, "the packaged 1-bit adapter loses against its trained model"
        assert info["distill"]["steps"] > 0, "its row scales were not fitted to the trained model's scores"
    else:
        # A LoRA trained directly on earlier adapters (round 5: rank 16 on round 4's rank 32): the rank-48 SVD holds
        # it exactly (fp16 rounding aside). A lossy adapter (round 1's rank-16 SVD of a full fine-tune: errors
        # ~0.7) fails here.
        assert max(info["relative_error"].values()) < 0.01, "the packaged adapter approximates its trained model"
    pairs = ADAPTER_PAIRS[:2]
    base_scores = Reranker(str(base.path), backend="torch", device="cpu").predict(pairs)
    default_scores = Reranker(backend="torch", device="cpu").predict(pairs)
    assert np.abs(default_scores - base_scores).max() > 0.1


def test_cache_folder_that_cannot_be_created_is_one_line(tmp_path):
    """PRORANK_EDGE_CACHE under a regular file: one line naming the folder and the variable, exit 2."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "x"}\n')
    env = dict(os.environ, PRORANK_EDGE_CACHE=str(blocker / "cache"))
    result = subprocess.run([sys.executable, "-m", "prorank_edge.cli", "rerank", "-q", "q", "-d", str(docs)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: {blocker / 'cache'}") and "PRORANK_EDGE_CACHE" in lines[0]


@requires_torch
@pytest.mark.slow
def test_first_run_prints_only_the_projects_own_lines(tmp_path):
    """A new user's first run converts and merges the built-in model: no library notices, no tensor bars."""
    env = dict(os.environ, PRORANK_EDGE_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-m", "prorank_edge.cli", "rerank", "-q", "what causes influenza",
                             "-d", str(REPO / "examples" / "docs.jsonl"), "--top-k", "2"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert any("converting SmolLM2-135M-Instruct.Q4_1.gguf" in line for line in lines)
    assert all(line.startswith("prorank-edge: ") for line in lines), result.stderr
    assert result.stdout.splitlines()[1].split()[1] == "flu-cause"
