"""BEIR loading and resolving (evaluation/beir.py): SciFact and a tiny folder, qrels order, errors that name the
file and line, unknown names and failed downloads."""

from __future__ import annotations

import pytest
from conftest import write_tiny_beir

from prorank_edge.errors import InputError, ProrankError
from prorank_edge.evaluation import beir
from prorank_edge.evaluation.beir import load_beir, resolve_beir

# ---- loading -------------------------------------------------------------------------------------------

def test_load_beir_scifact(scifact_dir, scifact_test):
    assert scifact_test.name == "scifact" and scifact_test.split == "test"
    assert len(scifact_test.corpus) == 5183
    assert len(scifact_test.queries) == 300
    assert list(scifact_test.queries) == list(scifact_test.qrels)
    assert sum(len(j) for j in scifact_test.qrels.values()) == 339
    assert list(scifact_test.queries)[0] == "1"  # first row of qrels/test.tsv
    doc = scifact_test.corpus["4983"]
    assert doc.full_text.startswith("Microstructural development of human newborn cerebral white matter")
    assert len(load_beir(scifact_dir, "train").queries) == 809


def test_load_beir_tiny_folder(tiny_beir):
    data = load_beir(tiny_beir)
    assert list(data.queries) == ["q3", "q1", "q2"]  # judged only, in qrels order; q9 is not in this split
    assert data.queries["q1"] == "does coffee affect sleep"
    assert data.qrels == {"q3": {"d5": 2, "d9": 1}, "q1": {"d1": 1, "d6": 0}, "q2": {"d2": 1, "d7": 1}}
    assert len(data.corpus) == 10
    assert data.corpus["d4"].full_text == "Deep sea fish produce light through bioluminescence."
    assert data.corpus["d1"].full_text == ("Coffee and sleep Caffeine in coffee delays sleep onset and shortens deep "
                                           "sleep.")
    assert list(load_beir(tiny_beir, "dev").queries) == ["q9"]


@pytest.mark.parametrize("bad_line, message", [
    ("q1\td1", "expected 3 tab-separated fields"),
    ("q1\td1\thigh", "score 'high' is not an integer"),
])
def test_malformed_qrels_names_file_and_line(tmp_path, bad_line, message):
    root = write_tiny_beir(tmp_path / "bad", ["q3\td5\t2", bad_line])
    with pytest.raises(InputError) as info:
        load_beir(root)
    # line 1 is the header, so the bad judgment is line 3
    assert f"{root / 'qrels' / 'test.tsv'}:3:" in str(info.value)
    assert message in str(info.value)


def test_missing_split_lists_existing_splits(tiny_beir):
    with pytest.raises(InputError, match=r"no such split 'train' \(splits here: dev, test\)"):
        load_beir(tiny_beir, "train")


def test_judged_query_missing_from_queries_file(tmp_path):
    root = write_tiny_beir(tmp_path / "orphan", ["q3\td5\t2", "q404\td1\t1"])
    with pytest.raises(InputError, match="query 'q404' is judged but not in"):
        load_beir(root)


# ---- resolving -----------------------------------------------------------------------------------------

def test_resolve_beir_returns_a_folder_unchanged(tiny_beir):
    assert resolve_beir(tiny_beir) == tiny_beir
    assert resolve_beir(str(tiny_beir)) == tiny_beir


def test_resolve_beir_unknown_name(tmp_path):
    with pytest.raises(InputError, match="not a BEIR dataset name"):
        resolve_beir("no-such-dataset", cache_dir=tmp_path)


def test_resolve_beir_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(beir, "BEIR_BASE_URL", "http://127.0.0.1:9")  # the discard port: connection refused
    with pytest.raises(ProrankError) as info:
        resolve_beir("scifact", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "downloading the BEIR dataset 'scifact' from http://127.0.0.1:9/scifact.zip failed" in message
    assert "--data" in message
    assert list((tmp_path / "cache").iterdir()) == []  # no half-finished download left behind


def test_a_lone_surrogate_in_the_corpus_names_file_line_and_field(tmp_path):
    root = write_tiny_beir(tmp_path / "tiny")
    with open(root / "corpus.jsonl", "a") as out:
        out.write('{"_id": "d99", "title": "", "text": "broken \\udfff escape"}\n')
    lines = (root / "corpus.jsonl").read_text().splitlines()
    with pytest.raises(InputError, match=rf"corpus\.jsonl:{len(lines)}: field 'text': invalid Unicode"):
        load_beir(root, "test")

