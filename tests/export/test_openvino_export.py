"""The OpenVINO int8 level (export/openvino_export.py): smoothing that leaves the function unchanged, parity of the
int8 IR with torch fp32 on random Qwen2 and Llama models (whole prompts and prefix reuse), integer kernels at run
time, one shared weights file, the CLI, bad files; and the ranking of the built-in model on SciFact (slow)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("onnxruntime")

from conftest import mixed_length_pairs, torch_fp32_backend, with_outlier_channel  # noqa: E402

from prorank_edge.devices import int8_sums_may_saturate  # noqa: E402
from prorank_edge.errors import ProrankError  # noqa: E402
from prorank_edge.export.parity import groups_by_query, spearman  # noqa: E402


@pytest.fixture(scope="session")
def openvino_int8(tmp_path_factory):
    """export_openvino once per source artifact for the whole session."""
    from prorank_edge.export.openvino_export import export_openvino

    made = {}

    def make(onnx_artifact):
        if onnx_artifact not in made:
            out = tmp_path_factory.mktemp("openvino") / onnx_artifact.name
            export_openvino(onnx_artifact, out)
            made[onnx_artifact] = out
        return made[onnx_artifact]

    return make


def openvino_backend(path, **kwargs):
    from prorank_edge.backends.openvino_backend import OpenVinoBackend

    return OpenVinoBackend(path, **kwargs)


def per_query_spearman(expected, got, pairs) -> float:
    return float(np.mean([spearman(expected[g], got[g]) for g in groups_by_query(pairs)]))


def test_smoothing_leaves_the_scores_unchanged(tiny_qwen2_dir, tmp_path):
    """Dividing each int8 matmul's input by s and multiplying its weight rows by s is the same function."""
    import onnx
    import onnxruntime as ort

    from prorank_edge.backends.onnx_artifact import read_artifact
    from prorank_edge.contract import PromptBuilder, left_pad
    from prorank_edge.export.onnx_export import export_onnx
    from prorank_edge.export.onnx_int8 import calibrate, channel_factors
    from prorank_edge.export.openvino_export import int8_matmuls, smooth

    # An outlier channel makes the factors far from 1, so a transform that is not exact shows.
    onnx_dir = tmp_path / "onnx"
    export_onnx(with_outlier_channel(tiny_qwen2_dir, tmp_path / "outlier"), onnx_dir)
    model = onnx.load(str(onnx_dir / "model.onnx"))
    keys, keep_float = int8_matmuls(model)
    # 2 layers x (q, k, v, o, gate, up) go int8; down_proj and attention's products stay float
    assert len(keys) == 12
    assert sum("down_proj" in name for name in keep_float) == 2
    assert not any(re.search(r"(q|k|v|o|gate|up)_proj", name) for name in keep_float)

    artifact = read_artifact(onnx_dir)
    builder = PromptBuilder(artifact.tokenizer, artifact.contract)
    rows = [r for q, d in mixed_length_pairs(6) for r in builder.build(q, [d])]
    feed = dict(zip(("input_ids", "attention_mask"), left_pad(rows)))
    factors = channel_factors(calibrate(onnx_dir / "model.onnx", [feed]), alpha=0.95, outlier_ratio=np.inf)
    assert max(float(np.abs(np.log(f["scale"])).max()) for k, f in factors.items() if k in keys) > 1.0
    smoothed = smooth(onnx.load(str(onnx_dir / "model.onnx")), factors, keys)
    # one Mul per activation tensor: q, k and v share one, gate and up another, o its own
    assert sum(n.op_type == "Mul" and n.name.startswith("smooth/") for n in smoothed.graph.node) == 6

    def run(proto):
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(["score"], feed)[0]

    before, after = run(model), run(smoothed)
    assert np.abs(after - before).max() < 1e-3 * max(1.0, float(np.abs(before).max()))


@pytest.mark.parametrize("artifact, checkpoint", [("tiny_qwen2_onnx", "tiny_qwen2_dir"),
                                                  ("tiny_llama_onnx", "tiny_llama_dir")])
def test_int8_tracks_torch_fp32_with_and_without_prefix_reuse(artifact, checkpoint, request, openvino_int8):
    from prorank_edge import Reranker

    folder = openvino_int8(request.getfixturevalue(artifact))
    pairs = mixed_length_pairs(16)
    reference = torch_fp32_backend(request.getfixturevalue(checkpoint))
    expected = np.concatenate([reference.score_batch(reference.prompts.build(q, [d])) for q, d in pairs])
    backend = openvino_backend(folder, dtype="float32", threads=1)
    assert backend.reuses_prefix and backend.describe()["quant"] == "int8"
    whole = Reranker.from_backend(backend, batch_size=4, prefix_cache=False).predict(pairs)
    reused = Reranker.from_backend(backend, batch_size=4, prefix_cache=True).predict(pairs)
    spread = float(np.ptp(expected))
    print(f"\nopenvino int8: max |whole - fp32| {np.abs(whole - expected).max():.3f} of a spread {spread:.3f}, "
          f"max |reused - whole| {np.abs(reused - whole).max():.2e}")
    assert np.abs(reused - whole).max() < 0.02 * spread  # computing the prefix once changes next to nothing
    if not int8_sums_may_saturate():  # (x86 without VNNI adds its own error to both)
        for got in (whole, reused):
            # int8 moves a random model's scores by a few percent of their spread and keeps their order
            assert np.abs(got - expected).max() < 0.15 * spread
            assert per_query_spearman(expected, got, pairs) > 0.9
    counts = backend.token_counts
    assert counts["computed_tokens"] < counts["prompt_tokens"]


def test_int8_runs_on_integer_kernels(tiny_qwen2_onnx, openvino_int8):
    """The compiled graphs run the projections in 8 bits (a silent float fallback fails here), down_proj not."""
    backend = openvino_backend(openvino_int8(tiny_qwen2_onnx), threads=1)
    backend.score_with_prefix(*_prefix_and_suffixes(backend))
    backend.score_batch(backend.prompts.build("what does a reranker do", ["a document", "another"]))
    for request, layers in ((backend.suffix_request, 2), (backend.request, 2)):
        executed = request.get_compiled_model().get_runtime_model()
        integer = [op.get_friendly_name() for op in executed.get_ordered_ops()
                   if op.get_rt_info()["layerType"].astype(str) in ("FullyConnected", "MatMul")
                   and op.get_rt_info()["runtimePrecision"].astype(str) in ("i8", "u8")]
        assert len(integer) == 6 * layers, integer
        assert not any("down_proj" in name for name in integer)


def _prefix_and_suffixes(backend):
    from prorank_edge.contract import shared_prefix_length

    rows = backend.prompts.build("what does a reranker do", ["a document", "another one, longer than the first"])
    cut = shared_prefix_length(rows)
    return rows[0][:cut], [r[cut:] for r in rows]


def test_three_graphs_share_one_weights_file(tiny_qwen2_onnx, openvino_int8):
    folder = openvino_int8(tiny_qwen2_onnx)
    info = json.loads((folder / "export_info.json").read_text())
    assert {p.name for p in folder.iterdir()} == {"model.xml", "prefix.xml", "suffix.xml", "model.bin",
                                                  "tokenizer.json", "prorank_contract.json", "export_info.json"}
    assert info["format"] == "openvino" and info["quant"] == "int8"
    graphs = info["openvino"]["graphs"]
    assert graphs["model.onnx"]["int8_weights"] >= 12
    # prefix.xml and suffix.xml add their own activation ranges, not their own weights
    assert info["openvino"]["weights_bytes_saved_by_sharing"] > 0.9 * (folder / "model.bin").stat().st_size


def test_nncf_keeps_the_gptq_rounded_weights(tiny_qwen2_onnx, openvino_int8):
    """The IR's int8 weights are exactly GPTQ's steps, recomputed here from the same calibration: NNCF found them
    on its grid and did not round them again (which would undo GPTQ without failing anything else)."""
    import onnx
    import openvino as ov

    from prorank_edge.backends.onnx_artifact import read_artifact
    from prorank_edge.contract import PromptBuilder
    from prorank_edge.export.onnx_int8 import _constant_matmuls, weight_key
    from prorank_edge.export.openvino_export import OPENVINO_SMOOTHING_ALPHA, calibrated_factors, calibration_rows
    from prorank_edge.export.parity import builtin_calibration_pairs

    folder = openvino_int8(tiny_qwen2_onnx)
    info = json.loads((folder / "export_info.json").read_text())["openvino"]
    assert info["weight_rounding"] == "gptq" and info["gptq_error_vs_nearest"] < 1.0
    artifact = read_artifact(tiny_qwen2_onnx)
    rows = calibration_rows(PromptBuilder(artifact.tokenizer, artifact.contract), builtin_calibration_pairs())
    model = onnx.load(str(tiny_qwen2_onnx / "model.onnx"))
    _, factors, _ = calibrated_factors(model, tiny_qwen2_onnx / "model.onnx", rows, OPENVINO_SMOOTHING_ALPHA)
    weights = {weight_key(w): w for _, _, w in _constant_matmuls(model)}
    ir = ov.Core().read_model(str(folder / "model.xml"), str(folder / "model.bin"))
    stored = [np.array(op.get_data()) for op in ir.get_ordered_ops()
              if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8]
    moved = 0
    for key, f in factors.items():
        scale = np.abs(f["weight"]).max(0) / 127
        steps = np.round(f["weight"] / scale).astype(np.int8)
        assert any(np.array_equal(steps, s) for s in stored), key
        moved += int((steps != np.round(weights[key] * f["scale"][:, None] / scale)).sum())
    assert len(factors) == 12 and moved > 0  # GPTQ moved some weights off their nearest step


def test_export_command_and_auto_backend(tiny_qwen2_dir, tmp_path):
    from click.testing import CliRunner

    from prorank_edge import Reranker
    from prorank_edge.cli import main

    out = tmp_path / "ov"
    result = CliRunner().invoke(main, ["export", "-m", str(tiny_qwen2_dir), "--format", "openvino", "-o", str(out),
                                       "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["format"] == "openvino" and summary["quant"] == "int8"
    assert summary["parity_builtin"]["spearman"] > 0.9
    with Reranker(str(out)) as reranker:  # auto: an OpenVINO folder goes to the openvino backend
        assert reranker.backend.name == "openvino"
    with pytest.raises(ProrankError, match="the onnx backend cannot read it"):
        Reranker(str(out), backend="onnx")
    bad = CliRunner().invoke(main, ["export", "-m", str(tiny_qwen2_dir), "--format", "onnx", "-o",
                                    str(tmp_path / "x"), "--calibration-data", "scifact"])
    assert bad.exit_code != 0 and "--calibration-data applies to OpenVINO exports only" in bad.output


def test_bad_files_are_named(tiny_qwen2_onnx, openvino_int8, tmp_path):
    from prorank_edge.export.openvino_export import export_openvino

    broken = tmp_path / "broken"
    shutil.copytree(openvino_int8(tiny_qwen2_onnx), broken)
    (broken / "model.bin").unlink()
    with pytest.raises(ProrankError, match=re.escape(str(broken / "model.bin")) + ": missing"):
        openvino_backend(broken)
    with pytest.raises(ProrankError, match="neither a transformers checkpoint .* nor an ONNX artifact"):
        export_openvino(broken, tmp_path / "again")
    quantized = tmp_path / "int8-onnx"
    shutil.copytree(tiny_qwen2_onnx, quantized)
    info = json.loads((quantized / "export_info.json").read_text())
    (quantized / "export_info.json").write_text(json.dumps(dict(info, quant="int8")))
    with pytest.raises(ProrankError, match="from an fp32 ONNX artifact, not a int8 one"):
        export_openvino(quantized, tmp_path / "again")


@pytest.mark.slow
def test_builtin_model_keeps_its_ranking_in_int8(scifact_dir, tmp_path):
    """The shipped reranker in int8, calibrated on the built-in pairs, on SciFact test pairs: the order of each
    query's candidates stays close to fp32's (a lost-ranking regression, not the bench's accuracy figure)."""
    from conftest import scifact_gguf_pairs

    from prorank_edge import Reranker
    from prorank_edge.export.onnx_export import export_onnx
    from prorank_edge.export.openvino_export import export_openvino
    from prorank_edge.models import default_model

    model_dir = default_model().path
    onnx_dir = tmp_path / "onnx"
    export_onnx(model_dir, onnx_dir)
    export_openvino(onnx_dir, tmp_path / "ov")
    pairs = scifact_gguf_pairs(scifact_dir, n_queries=8, negatives=7)
    with Reranker(str(onnx_dir), backend="openvino", dtype="float32") as reference:
        expected = reference.predict(pairs)
    with Reranker(str(tmp_path / "ov"), dtype="float32") as int8:
        got = int8.predict(pairs)
    assert per_query_spearman(expected, got, pairs) > 0.93
