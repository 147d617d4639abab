"""benchmarks/cranfield_to_beir.py: Cranfield's files become a BEIR folder that `load_beir` reads, with its quirks
(qrels numbered by query position, 1 = most relevant, -1 = no interest) handled and no document lost."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO

from prorank_edge.evaluation.beir import load_beir

CORPUS = """.I 1
.T
wing in a slipstream .
.A
brenckman,m.
.B
j. ae. scs. 25, 1958, 324.
.W
wing in a slipstream .
  an experimental study of a wing
in a propeller slipstream .
.I 2
.T
shear flow past a flat plate .
.A
.B
.W
.I 3
.T
heat conduction in slabs .
.A
someone
.B
tn 1
.W
heat conduction in composite slabs .
"""

QUERIES = """.I 001
.W
what similarity laws apply to a wing
in a slipstream .
.I 004
.W
what problems of heat conduction in slabs are solved .
.I 007
.W
a query judged only as of no interest .
"""

QRELS = "1 1 1\n1 2 4\n1 3 -1\n2 3 2\n3 1 -1\n"


def _converter():
    spec = importlib.util.spec_from_file_location("cranfield_to_beir", REPO / "benchmarks" / "cranfield_to_beir.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_raw(folder, corpus=CORPUS, queries=QUERIES, qrels=QRELS):
    folder.mkdir()
    (folder / "cran.all.1400").write_text(corpus)
    (folder / "cran.qry").write_text(queries)
    (folder / "cranqrel").write_text(qrels)
    return folder


def test_converts_to_a_beir_folder_load_beir_reads(tmp_path):
    raw = _write_raw(tmp_path / "raw")
    assert _converter().main(["--raw", str(raw), "--output", str(tmp_path / "beir")]) == 0
    data = load_beir(tmp_path / "beir", split="test")
    # Every document kept, the empty abstract too; the title is not repeated at the start of the text.
    assert sorted(data.corpus) == ["1", "2", "3"]
    assert data.corpus["1"].title == "wing in a slipstream ."
    assert data.corpus["1"].text == "an experimental study of a wing in a propeller slipstream ."
    assert data.corpus["2"].text == ""
    # Query ids are positions in cran.qry (what cranqrel uses), not its `.I` ids (001, 004, 007).
    assert data.queries["2"] == "what problems of heat conduction in slabs are solved ."
    # Code 1 (complete answer) is the top grade, 4 the lowest, -1 dropped; a query left without a relevant
    # document is not a test query.
    assert data.qrels == {"1": {"1": 4, "2": 1}, "2": {"3": 3}}
    assert sorted(data.queries) == ["1", "2"]


@pytest.mark.parametrize(("qrels", "message"), [
    ("1 1 1\n1 9 2\n", "cranqrel:2: document 9"),
    ("1 1 1\n4 1 2\n", "cranqrel:2: query 4"),
    ("1 1 x\n", "cranqrel:1: relevance code 'x'"),
    ("1 1\n", "cranqrel:1: expected"),
    ("1 1 7\n", "cranqrel:1: unknown relevance code 7"),
])
def test_bad_qrels_name_the_file_and_line(tmp_path, capsys, qrels, message):
    raw = _write_raw(tmp_path / "raw", qrels=qrels)
    assert _converter().main(["--raw", str(raw), "--output", str(tmp_path / "beir")]) == 1
    assert message in capsys.readouterr().err


def test_bad_corpus_and_missing_file_are_reported(tmp_path, capsys):
    raw = _write_raw(tmp_path / "raw", corpus=CORPUS.replace(".I 3", ".I 3 extra"))
    assert _converter().main(["--raw", str(raw), "--output", str(tmp_path / "beir")]) == 1
    assert "cran.all.1400:18: expected '.I <id>'" in capsys.readouterr().err
    (raw / "cranqrel").unlink()
    assert _converter().main(["--raw", str(raw), "--output", str(tmp_path / "beir")]) == 2
    assert "cranqrel not found" in capsys.readouterr().err
