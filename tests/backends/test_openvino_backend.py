"""The openvino backend (backends/openvino_backend.py): the ONNX artifact that onnxruntime runs, compiled by
OpenVINO. Parity with torch fp32 on random Qwen2 and Llama models (whole prompts and the prefix reuse graphs),
the precision it picks per CPU, bad files and options, and scoring with neither torch nor onnxruntime."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("openvino")

from conftest import ONNX_PARITY_ATOL, mixed_length_pairs, torch_fp32_backend  # noqa: E402

from prorank_edge.devices import cpu_has_native_bf16  # noqa: E402
from prorank_edge.errors import ProrankError  # noqa: E402


def openvino_backend(path, **kwargs):
    from prorank_edge.backends.openvino_backend import OpenVinoBackend

    return OpenVinoBackend(path, **kwargs)


@pytest.mark.parametrize("artifact, checkpoint", [("tiny_qwen2_onnx", "tiny_qwen2_dir"),
                                                  ("tiny_llama_onnx", "tiny_llama_dir")])
def test_fp32_matches_torch_with_and_without_prefix_reuse(artifact, checkpoint, request):
    from prorank_edge import Reranker

    pairs = mixed_length_pairs(9)
    reference = torch_fp32_backend(request.getfixturevalue(checkpoint))
    expected = np.concatenate([reference.score_batch(reference.prompts.build(q, [d])) for q, d in pairs])
    backend = openvino_backend(request.getfixturevalue(artifact), dtype="float32", threads=1)
    assert backend.precision == "f32" and backend.reuses_prefix
    whole = Reranker.from_backend(backend, batch_size=4, prefix_cache=False).predict(pairs)
    reused = Reranker.from_backend(backend, batch_size=4, prefix_cache=True).predict(pairs)
    assert np.abs(whole - expected).max() < ONNX_PARITY_ATOL
    assert np.abs(reused - expected).max() < ONNX_PARITY_ATOL
    # the reuse graphs really ran: fewer tokens computed than were in the prompts
    counts = backend.token_counts
    assert counts["computed_tokens"] < counts["prompt_tokens"]


def test_auto_precision_follows_the_cpu_and_bf16_keeps_the_ranking(tiny_qwen2_onnx, tiny_qwen2_dir):
    auto = openvino_backend(tiny_qwen2_onnx, threads=1)
    assert auto.precision == ("bf16" if cpu_has_native_bf16() else "f32")
    assert auto.describe()["precision"] == auto.precision
    # What OpenVINO compiled is what was asked for (a silent f32 fallback would fail here).
    import openvino as ov

    compiled = auto.request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT")
    assert compiled == {"bf16": ov.Type.bf16, "f32": ov.Type.f32}[auto.precision]
    if not cpu_has_native_bf16():
        pytest.skip("no native bf16 on this CPU: auto is f32, checked above")
    query, documents = "what does a reranker do", [d for _, d in mixed_length_pairs(12)]
    reference = torch_fp32_backend(tiny_qwen2_dir)
    expected = reference.score_batch(reference.prompts.build(query, documents))
    scores = auto.score_batch(auto.prompts.build(query, documents))
    spread = float(expected.max() - expected.min())
    # bf16 keeps 8 bits of mantissa: scores move by a few hundredths of their spread on a random model
    assert np.abs(scores - expected).max() < 0.1 * spread


def test_bad_files_and_options_are_named(tiny_qwen2_onnx, tiny_qwen2_dir, tmp_path):
    from prorank_edge import Reranker

    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen2_onnx, broken)
    (broken / "model.onnx").write_bytes(b"garbage" * 1000)
    # the reuse graphs read their weights inside model.onnx: its export-time fingerprint catches the rewrite
    with pytest.raises(ProrankError, match=re.escape(str(broken)) + ": model.onnx has changed since export"):
        openvino_backend(broken)
    for name in ("prefix.onnx", "suffix.onnx"):
        (broken / name).unlink()
    with pytest.raises(ProrankError, match=re.escape(str(broken / "model.onnx")) + ": OpenVINO cannot compile"):
        openvino_backend(broken)
    lone = tmp_path / "lone"
    shutil.copytree(tiny_qwen2_onnx, lone)
    (lone / "suffix.onnx").unlink()
    with pytest.raises(ProrankError, match="suffix.onnx: missing"):
        openvino_backend(lone)
    with pytest.raises(ProrankError, match="runs on the CPU"):
        openvino_backend(tiny_qwen2_onnx, device="cuda")
    with pytest.raises(ProrankError, match="dtype 'int3'"):
        openvino_backend(tiny_qwen2_onnx, dtype="int3")
    with pytest.raises(ProrankError, match="this is a torch model; the openvino backend cannot read it "
                                           r"\(use --backend torch or auto\)"):
        Reranker(str(tiny_qwen2_dir), backend="openvino")


def test_rerank_command_runs_openvino(tiny_qwen2_onnx, tmp_path):
    import json

    from click.testing import CliRunner

    from prorank_edge.cli import main

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": d}) + "\n" for i, (_, d) in
                            enumerate(mixed_length_pairs(5))))
    args = ["rerank", "-q", "what does a reranker do", "-d", str(docs), "-m", str(tiny_qwen2_onnx), "-o", "json"]
    onnx = CliRunner().invoke(main, args + ["--dtype", "float32"])
    vino = CliRunner().invoke(main, args + ["--backend", "openvino", "--dtype", "float32"])
    assert onnx.exit_code == 0 and vino.exit_code == 0, vino.output
    ranked = [json.loads(r.stdout) for r in (onnx, vino)]
    assert [d["id"] for d in ranked[0]["results"]] == [d["id"] for d in ranked[1]["results"]]


def test_openvino_backend_runs_without_torch_or_onnxruntime(tiny_qwen2_onnx):
    """`prorank-edge[openvino]` alone is enough to rerank an exported artifact."""
    code = (
        "import sys\n"
        "from prorank_edge import Reranker\n"
        f"r = Reranker({str(tiny_qwen2_onnx)!r}, backend='openvino')\n"
        "print(r.predict([('q', 'a document')])[0])\n"
        "bad = [m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert np.isfinite(float(result.stdout.strip().splitlines()[-1]))
