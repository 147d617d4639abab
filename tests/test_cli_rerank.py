"""`prorank-edge rerank`: input validation and output, through the real command line entry point."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import requires_torch

from prorank_edge.cli import main


def run(args, input=None):
    return CliRunner().invoke(main, args, input=input)


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


BAD_INPUTS = [
    (b'{"id": "a", "text": "ok"}\n{"id": "b", "text": \n', "bad.jsonl:2: invalid JSON"),
    (b'{"id": "a"}\n', "bad.jsonl:1: field 'text' is missing"),
    (b'{"id": "a", "text": 5}\n', "bad.jsonl:1: field 'text': expected a string, got int"),
    (b'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "bad.jsonl:2: field 'id': duplicate id 'a'"),
    (b"", "bad.jsonl: no documents"),
    (b'{"id": "a", "text": "caf\xe9"}\n', "bad.jsonl:1: invalid UTF-8"),
    (b'["a", "b"]\n', "bad.jsonl:1: expected a JSON object"),
    (b'{"id": "a", "text": "x", "title": 3}\n', "bad.jsonl:1: field 'title'"),
    (b'{"id": "a", "text": "x", "score": "high"}\n', "bad.jsonl:1: field 'score'"),
]


@pytest.mark.parametrize("data,message", BAD_INPUTS)
def test_bad_documents_give_one_line_and_exit_2(tmp_path, data, message):
    result = run(["rerank", "--query", "q", "--docs", write(tmp_path, "bad.jsonl", data)])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_file_and_empty_query(tmp_path):
    result = run(["rerank", "--query", "q", "--docs", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "nope.jsonl: no such file" in result.output
    ok = write(tmp_path, "ok.jsonl", b'{"id": "a", "text": "x"}\n')
    result = run(["rerank", "--query", "   ", "--docs", ok])
    assert result.exit_code == 2 and "--query is empty" in result.output


def test_unknown_local_model_and_offline_hub(tmp_path, monkeypatch):
    ok = write(tmp_path, "ok.jsonl", b'{"id": "a", "text": "x"}\n')
    result = run(["rerank", "-q", "q", "--docs", ok, "--model", str(tmp_path / "missing-model")])
    assert result.exit_code == 2 and "no such file or folder" in result.output
    (tmp_path / "empty-model").mkdir()
    result = run(["rerank", "-q", "q", "--docs", ok, "--model", str(tmp_path / "empty-model")])
    assert result.exit_code == 2 and "no model found" in result.output
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to fall back on
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    result = run(["rerank", "-q", "q", "--docs", ok, "--model", "mixedbread-ai/mxbai-rerank-base-v2"])
    assert result.exit_code == 2
    assert "cannot reach the Hugging Face Hub" in result.output and "--model PATH" in result.output
    assert "Traceback" not in result.output


def test_blank_lines_bom_ids_and_stdin(tmp_path):
    from prorank_edge.documents import load_documents

    path = write(tmp_path, "d.jsonl",
                 '\ufeff{"_id": 7, "text": "seven"}\n\n{"text": "no id", "title": "T"}\n'.encode())
    docs = load_documents(path)
    assert [(d.id, d.full_text) for d in docs] == [("7", "seven"), ("3", "T no id")]


@requires_torch
def test_rerank_outputs_every_document_once(tiny_qwen2_dir, tmp_path):
    lines = [json.dumps({"id": f"d{i}", "text": f"document number {i} " * (i + 1)}) for i in range(7)]
    docs = write(tmp_path, "docs.jsonl", ("\n".join(lines) + "\n").encode())
    common = ["rerank", "-q", "which document?", "--docs", docs, "--model", str(tiny_qwen2_dir), "--dtype", "float32"]
    as_json = run(common + ["--output", "json"])
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.output)
    ids = [r["id"] for r in payload["results"]]
    assert sorted(ids) == [f"d{i}" for i in range(7)]
    scores = [r["score"] for r in payload["results"]]
    assert scores == sorted(scores, reverse=True)
    assert [r["rank"] for r in payload["results"]] == list(range(1, 8))
    jsonl = run(common + ["--output", "jsonl", "--top-k", "3"])
    records = [json.loads(line) for line in jsonl.output.strip().splitlines()]
    assert [r["id"] for r in records] == ids[:3]
    stdin = run(["rerank", "-q", "which document?", "--docs", "-", "--model", str(tiny_qwen2_dir),
                 "--dtype", "float32", "--output", "jsonl"], input="\n".join(lines))
    assert [json.loads(x)["id"] for x in stdin.output.strip().splitlines()] == ids
    table = run(common)
    assert table.exit_code == 0 and table.output.splitlines()[0].split()[:3] == ["rank", "id", "score"]
    assert len(table.output.strip().splitlines()) == 8


def test_help_and_import_stay_light():
    """--help works and importing the CLI pulls in neither torch nor onnxruntime."""
    code = ("import sys; import prorank_edge.cli; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'llama_cpp', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = run(["rerank", "--help"])
    assert result.exit_code == 0 and "--docs" in result.output and "--top-k" in result.output
