"""`prorank-edge export` argument checks: quant levels the format lacks, outputs that exist or cannot be
written, an artifact given as the source."""

from click.testing import CliRunner

from prorank_edge.cli import main


def run(args):
    return CliRunner().invoke(main, args)


def test_quant_level_the_format_lacks(tmp_path):
    result = run(["export", "--format", "gguf", "--quant", "int8", "--output", str(tmp_path / "m.gguf")])
    assert result.exit_code == 2
    assert "--quant 'int8' is not a gguf level; choose one of: f16, bf16, q8_0, q4_k_m" in result.output
    result = run(["export", "--format", "onnx", "--quant", "q4_k_m", "--output", str(tmp_path / "m")])
    assert result.exit_code == 2 and "fp32, fp16, int8, w8a8, int4" in result.output
    result = run(["export", "--format", "onnx", "--smooth", "0.5", "--output", str(tmp_path / "m")])
    assert result.exit_code == 2 and "--smooth applies to GGUF exports only" in result.output
    result = run(["export", "--format", "gguf", "--smooth", "1.5", "--output", str(tmp_path / "m.gguf")])
    assert result.exit_code == 2 and "1.5 is not in the range 0<=x<=1" in result.output
    result = run(["export", "--format", "onnx", "--rank-head", "--output", str(tmp_path / "m")])
    assert result.exit_code == 2 and "--rank-head applies to GGUF exports only" in result.output


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
