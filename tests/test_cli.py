"""`prorank-edge rerank` and the command group: input validation, output, fusion with first-stage scores, through
the real command line entry point."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import requires_torch, write_file

from prorank_edge.cli import main


def run(args, input=None):
    return CliRunner().invoke(main, args, input=input)


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
    # valid JSON, invalid Unicode: a lone surrogate escape, which the tokenizer rejects with a bare TypeError
    (b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "bad \\ud800 here"}\n',
     "bad.jsonl:2: field 'text': invalid Unicode: a lone surrogate U+D800 at character 5"),
    (b'{"id": "a", "title": "\\udc00", "text": "x"}\n', "bad.jsonl:1: field 'title': invalid Unicode"),
    (b'{"id": "\\ud83d", "text": "x"}\n', "bad.jsonl:1: field 'id': invalid Unicode"),
]


@pytest.mark.parametrize("data,message", BAD_INPUTS)
def test_bad_documents_give_one_line_and_exit_2(tmp_path, data, message):
    result = run(["rerank", "--query", "q", "--docs", write_file(tmp_path, "bad.jsonl", data)])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_file_and_empty_query(tmp_path):
    result = run(["rerank", "--query", "q", "--docs", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "nope.jsonl: no such file" in result.output
    ok = write_file(tmp_path, "ok.jsonl", b'{"id": "a", "text": "x"}\n')
    result = run(["rerank", "--query", "   ", "--docs", ok])
    assert result.exit_code == 2 and "--query is empty" in result.output


def test_unknown_local_model_and_offline_hub(tmp_path, monkeypatch):
    ok = write_file(tmp_path, "ok.jsonl", b'{"id": "a", "text": "x"}\n')
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


@requires_torch
def test_rerank_outputs_every_document_once(tiny_qwen2_dir, tmp_path):
    lines = [json.dumps({"id": f"d{i}", "text": f"document number {i} " * (i + 1)}) for i in range(7)]
    docs = write_file(tmp_path, "docs.jsonl", ("\n".join(lines) + "\n").encode())
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
    # the shared prompt prefix ran once; --no-prefix-cache runs every prompt whole, to the same ranking
    assert payload["model"]["prefix_cache"] is True
    assert payload["model"]["computed_tokens"] < payload["model"]["prompt_tokens"]
    whole = json.loads(run(common + ["--output", "json", "--no-prefix-cache"]).output)
    assert whole["model"]["prefix_cache"] is False
    assert whole["model"]["computed_tokens"] == whole["model"]["prompt_tokens"] == payload["model"]["prompt_tokens"]
    assert [r["id"] for r in whole["results"]] == ids


def test_help_and_import_stay_light():
    """--help works and importing the CLI pulls in neither torch nor onnxruntime."""
    code = ("import sys; import prorank_edge.cli; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'llama_cpp', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = run(["rerank", "--help"])
    assert result.exit_code == 0 and "--docs" in result.output and "--top-k" in result.output


# ---- fusion with first-stage scores --------------------------------------------------------------------

def test_rerank_fusion_needs_scores(tmp_path):
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"id": "a", "text": "x", "score": 1.5}\n{"id": "b", "text": "y"}\n')
    result = CliRunner().invoke(main, ["rerank", "-q", "q", "-d", str(docs), "--fusion-weight", "0.5"])
    assert result.exit_code == 2 and "d.jsonl:2: field 'score' is missing" in result.output


@requires_torch
def test_rerank_fusion_weight_zero_keeps_first_stage_order(tiny_qwen2_dir, tmp_path):
    docs = tmp_path / "d.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": f"text {i} " * (i + 1), "score": float(s)})
             for i, s in enumerate([3, 9, 1, 7, 5])]
    docs.write_text("\n".join(lines) + "\n")
    base = ["rerank", "-q", "q", "-d", str(docs), "-m", str(tiny_qwen2_dir), "--dtype", "float32", "-o", "json"]
    first_stage = json.loads(CliRunner().invoke(main, base + ["--fusion-weight", "0"]).output)
    assert [r["id"] for r in first_stage["results"]] == ["d1", "d3", "d4", "d0", "d2"]
    alone = json.loads(CliRunner().invoke(main, base).output)
    fused_one = json.loads(CliRunner().invoke(main, base + ["--fusion-weight", "1"]).output)
    assert [r["id"] for r in fused_one["results"]] == [r["id"] for r in alone["results"]]
    assert all("rerank_score" in r for r in fused_one["results"])


@requires_torch
def test_a_contract_fusion_weight_applies_only_when_every_document_has_a_score(tiny_qwen2_dir, scifact_dir,
                                                                              tmp_path):
    import shutil

    from prorank_edge.contract import ScoringContract

    model = tmp_path / "model"
    shutil.copytree(tiny_qwen2_dir, model)
    ScoringContract.load(model).replace(extra={"fusion_weight": 0.0}).save(model)
    scored, unscored = tmp_path / "scored.jsonl", tmp_path / "unscored.jsonl"
    scored.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text {i} " * (i + 1), "score": float(s)}) + "\n"
                              for i, s in enumerate([3, 9, 1, 7, 5])))
    unscored.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text {i} " * (i + 1)}) + "\n" for i in range(5)))
    base = ["rerank", "-q", "q", "-m", str(model), "--dtype", "float32", "-o", "json"]
    fused = json.loads(CliRunner().invoke(main, base + ["-d", str(scored)]).output)
    assert fused["fusion_weight"] == 0.0  # the contract's weight: the first stage's order
    assert [r["id"] for r in fused["results"]] == ["d1", "d3", "d4", "d0", "d2"]
    alone = json.loads(CliRunner().invoke(main, base + ["-d", str(unscored)]).output)
    assert alone["fusion_weight"] is None and "rerank_score" not in alone["results"][0]
    overridden = json.loads(CliRunner().invoke(main, base + ["-d", str(scored), "--fusion-weight", "1"]).output)
    assert [r["id"] for r in overridden["results"]] == [r["id"] for r in alone["results"]]

    result = CliRunner().invoke(main, ["eval", "--data", str(scifact_dir), "-m", str(model), "--dtype", "float32",
                                       "--max-queries", "2", "--top-k", "5", "--quiet", "--output", "json"])
    report = json.loads(result.output)
    assert report["fusion"] == {"weight": 0.0, "from": "model contract"}
    assert report["metrics"]["fusion"]["ndcg@10"] == pytest.approx(report["metrics"]["bm25"]["ndcg@10"])


@pytest.mark.parametrize("option", ["--query", "--instruction"])
def test_command_line_bytes_that_are_not_utf8_name_the_option(tmp_path, option):
    """Python decodes such argv bytes to lone surrogates (surrogateescape); the tokenizer would crash on them."""
    ok = write_file(tmp_path, "ok.jsonl", b'{"id": "a", "text": "x"}\n')
    args = ["rerank", "--query", "q", "--docs", ok] + ([option, "bad \udcff"] if option == "--instruction" else [])
    if option == "--query":
        args[2] = "bad \udcff"
    result = run(args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{option}: invalid Unicode: a lone surrogate U+DCFF at character 5" in result.output



# SIGTERM after the command has returned: before the fix a finished `batch` job exited 1 ("Aborted!") when the
# signal landed in click's wrap-up, and printed a Terminated traceback when it landed in an atexit hook.
LATE_SIGTERM = {
    "click's wrap-up": """
        import click
        from prorank_edge import cli
        invoke, leave, returned = cli._Group.invoke, click.Context.__exit__, []
        def invoke_and_note(self, ctx):
            try:
                return invoke(self, ctx)
            finally:
                returned.append(True)
        def signal_then_leave(self, *exc):
            if returned and self.parent is None:  # the top context, left after the command returned
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            return leave(self, *exc)
        cli._Group.invoke, click.Context.__exit__ = invoke_and_note, signal_then_leave
    """,
    "an atexit hook": """
        import atexit
        atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5)))
    """,
}


@pytest.mark.parametrize("where", list(LATE_SIGTERM))
def test_sigterm_after_the_command_returned_exits_with_its_status(where):
    import textwrap

    script = "import os, signal, sys, time\n" + textwrap.dedent(LATE_SIGTERM[where]) + textwrap.dedent("""
        from prorank_edge.cli import main
        main(["rerank", "--help"], prog_name="prorank-edge")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: prorank-edge rerank" in done.stdout
    assert done.stderr == ""
