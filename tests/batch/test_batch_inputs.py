"""prorank_edge.batch inputs and shards, without a model: every bad row is reported by line and id and left out,
shards are cut the same way every time, a resumed shard folder must match its manifest, and a merge refuses a
shard that lost or repeated a pair."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_tiny_beir

from prorank_edge.batch.inputs import (
    Checks,
    QueryTask,
    input_spec,
    read_jsonl,
    read_parquet,
    read_run_input,
)
from prorank_edge.batch.outputs import ShardStore, make_shards, read_output, shard_path, shards_folder
from prorank_edge.documents import Document
from prorank_edge.errors import InputError, ProrankError
from prorank_edge.evaluation.metrics import read_trec_run, write_trec_run


def _query(qid, n=3, scored=True, **extra):
    cands = [{"id": f"{qid}-d{k}", "text": f"text {k} of {qid}", **({"score": float(k)} if scored else {})}
             for k in range(n)]
    return {"query_id": qid, "query": f"query {qid}", "candidates": cands, **extra}


def _write_lines(path: Path, lines: list) -> Path:
    with open(path, "wb") as out:
        for line in lines:
            out.write(line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line))
                      .encode("utf-8"))
            out.write(b"\n")
    return path


def test_jsonl_bad_rows_are_reported_by_line_and_id_and_the_rest_kept(tmp_path):
    lines = [
        _query("q1"),
        _query("q2", title_field=1),
        '{"query_id": "q3", "query": "broken", "candidates": [',
        {"query_id": "q4", "query": "no candidates field"},
        {"query_id": "q5", "query": "x", "candidates": [{"id": "a", "text": "t"}, {"id": "a", "text": "u"}]},
        {"query_id": "q6", "query": "x", "candidates": [{"id": "a", "text": 3}]},
        _query("q1"),
        b'{"query_id": "q8", "query": "caf\xe9", "candidates": []}',
        '{"query_id": "q9", "query": "\\ud800", "candidates": []}',
        {"query_id": True, "query": "x", "candidates": []},
        {"query_id": "q11", "query": "   ", "candidates": []},
        "",
        {"query_id": 12, "query": "integer ids become strings", "candidates": [{"_id": 7, "text": "t"}]},
    ]
    path = _write_lines(tmp_path / "in.jsonl", lines)
    data = read_jsonl(path)
    assert [t.query_id for t in data.tasks] == ["q1", "q2", "12"]
    assert data.tasks[2].candidates == [Document("7", "t", "", None, 13)]
    assert data.pairs == 7
    reported = [(s.line, s.query_id) for s in data.skipped]
    assert reported == [(3, "q3"), (4, "q4"), (5, "q5"), (6, "q6"), (7, "q1"), (8, "q8"), (9, "q9"), (10, None),
                        (11, "q11")]
    reasons = {s.line: s.reason for s in data.skipped}
    assert reasons[3].startswith("invalid JSON")
    assert reasons[4] == "field 'candidates' is missing"
    assert "duplicate id 'a'" in reasons[5] and "candidates[0]" in reasons[5]
    assert reasons[6] == "field 'candidates[0].text': expected a string, got int"
    assert reasons[7] == "query id repeats (first on line 1)"
    assert "invalid UTF-8" in reasons[8]
    assert "lone surrogate" in reasons[9] and "'query'" in reasons[9]
    assert str(data.skipped[0]) == f"{path}:3 (query 'q3'): {reasons[3]}"


def test_checks_for_fusion_and_trec_output_refuse_queries_up_front(tmp_path):
    path = _write_lines(tmp_path / "in.jsonl", [_query("q1", scored=False), _query("q 2"), _query("q3")])
    assert [t.query_id for t in read_jsonl(path).tasks] == ["q1", "q 2", "q3"]
    data = read_jsonl(path, Checks(require_scores=True, trec_ids=True))
    assert [t.query_id for t in data.tasks] == ["q3"]
    assert "'candidates[0].score' is missing; --fusion-weight" in data.skipped[0].reason
    assert "whitespace" in data.skipped[1].reason


def test_parquet_input_names_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [_query("q1"), {**_query("q2"), "query": None}, _query("q3")]
    rows[2]["candidates"][1]["title"] = "A title"
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    data = read_parquet(path)
    assert [t.query_id for t in data.tasks] == ["q1", "q3"]
    assert data.tasks[1].candidates[1] == Document("q3-d1", "text 1 of q3", "A title", 1.0, 3)
    assert [(s.where, s.query_id, s.reason) for s in data.skipped] == [(f"{path}: row 2", "q2",
                                                                         "field 'query' is missing")]
    pq.write_table(pa.table({"query_id": ["q1"]}), tmp_path / "thin.parquet")
    with pytest.raises(InputError, match="no column 'query', 'candidates'"):
        read_parquet(tmp_path / "thin.parquet")
    assert input_spec(str(path)).kind == "parquet"


def test_trec_run_input_keeps_file_order_and_skips_whole_queries(tmp_path):
    beir = write_tiny_beir(tmp_path / "beir")
    run = tmp_path / "run.trec"
    run.write_text("\n".join([
        "q1 Q0 d6 1 9.5 bm25", "q3 Q0 d5 1 7 bm25", "q1 Q0 d1 2 9.5 bm25", "q1 Q0 d2 3 1.25 bm25",
        "q2 Q0 d2 1 3 bm25", "q2 Q0 nope 2 2 bm25", "q2 Q0 d7 3 1 bm25",  # q2 names a doc the corpus lacks
        "q9 Q0 d8 1 x bm25",  # a score that is no number
        "qX Q0 d1 1 1 bm25",  # a query queries.jsonl lacks
        "q3 Q0 d9 2 6",  # five fields
    ]) + "\n")
    data = read_run_input(run, beir)
    assert [t.query_id for t in data.tasks] == ["q1"]
    q1 = data.tasks[0]
    assert q1.query == "does coffee affect sleep" and q1.line == 1
    assert [(d.id, d.score, d.title) for d in q1.candidates] == [("d6", 9.5, "Tea"), ("d1", 9.5, "Coffee and sleep"),
                                                                 ("d2", 1.25, "Running injuries")]
    assert [(s.line, s.query_id) for s in data.skipped] == [(6, "q2"), (8, "q9"), (9, "qX"), (10, "q3")]
    assert "'nope' is not in" in data.skipped[0].reason
    assert "expected 6 fields" in data.skipped[3].reason
    spec = input_spec(run=str(run), data=str(beir))
    assert spec.kind == "trec" and len(spec.paths) == 3
    with pytest.raises(InputError, match="--run needs --data"):
        input_spec(run=str(run))


def test_trec_run_reader_reads_back_what_write_trec_run_wrote(tmp_path):
    run = {"q1": {"a": 0.1 + 0.2, "b": -3.0}, "q2": {"c": 1e-7}}
    write_trec_run(tmp_path / "r.trec", run)
    assert read_trec_run(tmp_path / "r.trec") == run
    (tmp_path / "dup.trec").write_text("q1 Q0 a 1 1 t\nq1 Q0 a 2 0 t\n")
    with pytest.raises(InputError, match="dup.trec:2: doc 'a' appears twice"):
        read_trec_run(tmp_path / "dup.trec")


def _tasks(count):
    return [QueryTask(f"q{i}", f"query {i}", [Document(f"d{i}-{k}", "t", score=float(k)) for k in range(2)], i + 1)
            for i in range(count)]


def _rows(shard):
    return [{"query_id": t.query_id, "doc_id": d.id, "rank": r, "score": -r, "rerank_score": -r,
             "first_stage_score": d.score} for t in shard.tasks for r, d in enumerate(t.candidates, start=1)]


def _manifest(**changes):
    base = {"input": {"sha256": "abc"}, "shard_size": 3, "shards": 3, "options": {"model": "m"},
            "queries_sha256": "q"}
    return {**base, **changes}


def test_shards_are_fixed_runs_of_queries_in_input_order():
    shards = make_shards(_tasks(7), 3)
    assert [[t.query_id for t in s.tasks] for s in shards] == [["q0", "q1", "q2"], ["q3", "q4", "q5"], ["q6"]]
    assert [s.index for s in shards] == [0, 1, 2] and shards[0].pairs == 6
    assert make_shards([], 3) == []


def test_resume_keeps_finished_shards_and_refuses_a_different_job(tmp_path):
    shards = make_shards(_tasks(7), 3)
    folder = shards_folder(tmp_path / "out.jsonl")
    assert folder.name == "out.jsonl.shards"
    store = ShardStore(folder, _manifest())
    assert store.open(resume=False) == set()
    store.write(1, _rows(shards[1]))
    # A staging file that a killed process left is never taken for a finished shard.
    (folder / ".shard-00002.jsonl.partial-999999-00000000").write_text('{"half": ')
    with pytest.raises(ProrankError, match="holds 1 finished shards of an earlier job; pass --resume"):
        ShardStore(folder, _manifest()).open(resume=False)
    assert ShardStore(folder, _manifest()).open(resume=True) == {1}
    with pytest.raises(ProrankError, match="cannot resume.*the input files changed.*model was 'm', now 'n'"):
        ShardStore(folder, _manifest(input={"sha256": "new"}, options={"model": "n"})).open(resume=True)
    with pytest.raises(ProrankError, match="--shard-size was 3, now 4"):
        ShardStore(folder, _manifest(shard_size=4)).open(resume=True)


def test_a_folder_without_finished_shards_starts_afresh(tmp_path):
    folder = tmp_path / "out.jsonl.shards"
    ShardStore(folder, _manifest()).open(resume=False)
    # e.g. the first try failed on a wrong --model: nothing to lose, so other options are fine
    assert ShardStore(folder, _manifest(options={"model": "fixed"})).open(resume=False) == set()
    assert json.loads((folder / "manifest.json").read_text())["options"] == {"model": "fixed"}


def test_merge_writes_shards_in_order_and_refuses_lost_or_repeated_pairs(tmp_path):
    shards = make_shards(_tasks(5), 2)
    output = tmp_path / "out.jsonl"
    store = ShardStore(shards_folder(output), _manifest())
    store.open(resume=False)
    for shard in reversed(shards):  # engines finish in any order
        store.write(shard.index, _rows(shard))
    assert store.merge(shards, output, "jsonl", tmp_path / "out.trec") == 10
    rows = read_output(output)
    assert [(r["query_id"], r["doc_id"]) for r in rows] == [(t.query_id, d.id) for t in _tasks(5)
                                                            for d in t.candidates]
    assert read_trec_run(tmp_path / "out.trec") == {q: {r["doc_id"]: r["score"] for r in rows if r["query_id"] == q}
                                                    for q in {r["query_id"] for r in rows}}
    path = shard_path(store.folder, 1)
    good = path.read_text()
    path.write_text(good + good.splitlines(keepends=True)[0])  # one pair twice
    with pytest.raises(ProrankError, match="shard-00001.jsonl: does not hold exactly the pairs of shard 1"):
        store.merge(shards, tmp_path / "again.jsonl", "jsonl")
    path.write_text("".join(good.splitlines(keepends=True)[1:]))  # one pair lost
    with pytest.raises(ProrankError, match="5 rows, 4 expected|does not hold exactly"):
        store.merge(shards, tmp_path / "again.jsonl", "jsonl")
    assert not (tmp_path / "again.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    path.write_text(good)
    pytest.importorskip("pyarrow")
    store.merge(shards, tmp_path / "out.parquet", "parquet")
    assert read_output(tmp_path / "out.parquet") == rows


def test_the_core_install_needs_no_ray(monkeypatch):
    """The command loads with click alone; --engine ray without the extra names the extra to install."""
    from prorank_edge.batch.ray_engine import import_ray
    from prorank_edge.errors import MissingExtraError

    loaded = subprocess.run([sys.executable, "-c", "import sys, prorank_edge.cli; "
                             "print(sorted({'ray', 'torch', 'pyarrow'} & set(sys.modules)))"],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'prorank-edge\[ray\]'"):
        import_ray()
