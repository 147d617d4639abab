"""`prorank-edge export` argument checks and the parity statistics it reports."""

import numpy as np
import pytest
from click.testing import CliRunner

from prorank_edge.cli import main
from prorank_edge.export.parity import builtin_pairs, groups_by_query, parity_summary, spearman, top_k_agreement


def run(args):
    return CliRunner().invoke(main, args)


def test_quant_level_the_format_lacks(tmp_path):
    result = run(["export", "--format", "gguf", "--quant", "int8", "--output", str(tmp_path / "m.gguf")])
    assert result.exit_code == 2
    assert "--quant 'int8' is not a gguf level; choose one of: f16, q8_0, q4_k_m" in result.output
    result = run(["export", "--format", "onnx", "--quant", "q4_k_m", "--output", str(tmp_path / "m")])
    assert result.exit_code == 2 and "fp32, fp16, int8, int4" in result.output
    result = run(["export", "--format", "onnx", "--smooth", "0.5", "--output", str(tmp_path / "m")])
    assert result.exit_code == 2 and "--smooth applies to GGUF exports only" in result.output
    result = run(["export", "--format", "gguf", "--smooth", "1.5", "--output", str(tmp_path / "m.gguf")])
    assert result.exit_code == 2 and "1.5 is not in the range 0<=x<=1" in result.output


def test_existing_or_unwritable_output(tmp_path):
    (tmp_path / "taken").mkdir()
    result = run(["export", "--format", "onnx", "--output", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "already exists (pass --overwrite" in result.output
    result = run(["export", "--format", "onnx", "--output", str(tmp_path / "no" / "such" / "dir")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = run(["export", "--format", "gguf", "--output", str(tmp_path / "model.bin")])
    assert result.exit_code == 2 and "ending in .gguf" in result.output


def test_export_refuses_an_artifact_as_source(tmp_path):
    artifact = tmp_path / "a.gguf"
    artifact.write_bytes(b"GGUF")
    result = run(["export", "--model", str(artifact), "--format", "onnx", "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "already a gguf artifact" in result.output


def test_spearman_matches_scipy_and_handles_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    b = a + rng.normal(scale=0.5, size=50)
    b[:10] = 0.0  # ties
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_parity_summary_and_top_k():
    ref = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    swapped = np.array([5.0, 4.0, 3.0, 2.0, 0.0, 1.0])  # the last two swap places
    groups = [[0, 1, 2], [3, 4, 5]]
    assert top_k_agreement(ref, swapped, groups, k=2) == pytest.approx(0.75)  # {3,4} vs {3,5}
    summary = parity_summary(ref, swapped, groups, k=2)
    assert summary["max_abs_drift"] == pytest.approx(1.0)
    assert summary["spearman"] == pytest.approx(1 - 6 * 2 / (6 * 35))
    pairs = builtin_pairs()
    assert len(groups_by_query(pairs)) == 6 and all(len(g) == 12 for g in groups_by_query(pairs))
