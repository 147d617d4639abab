"""BEIR evaluation layer: loading, BM25 first stage, trec_eval metrics, reranking evaluation and `eval`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from prorank_edge.commands.eval_cmd import eval_command
from prorank_edge.errors import InputError, ProrankError
from prorank_edge.evaluation import beir
from prorank_edge.evaluation.beir import load_beir, resolve_beir
from prorank_edge.evaluation.bm25 import BM25Retriever
from prorank_edge.evaluation.evaluate import evaluate_reranker
from prorank_edge.evaluation.metrics import evaluate_run, write_trec_run

TINY_CORPUS = [
    ("d1", "Coffee and sleep", "Caffeine in coffee delays sleep onset and shortens deep sleep."),
    ("d2", "Running injuries", "Runners who run long distances often injure their knees."),
    ("d3", "Photosynthesis", "Plants convert sunlight, water and carbon dioxide into sugar."),
    ("d4", "", "Deep sea fish produce light through bioluminescence."),
    ("d5", "Vaccines", "Vaccination trains the immune system to recognise a virus."),
    ("d6", "Tea", "Green tea contains less caffeine than coffee."),
    ("d7", "Knee surgery", "Arthroscopic knee surgery is common after sports injuries."),
    ("d8", "Volcanoes", "Volcanic eruptions release ash and sulphur dioxide."),
    ("d9", "Immune memory", "Memory B cells keep antibodies ready after an infection or vaccine."),
    ("d10", "Bread", "Yeast ferments sugar and makes bread dough rise."),
]
# Judged queries, deliberately not in id order: load_beir must keep the qrels file order.
TINY_QUERIES = {"q3": "how do vaccines protect against a virus", "q1": "does coffee affect sleep",
                "q2": "knee injuries from running", "q9": "an unjudged query about volcanoes"}
TINY_QRELS = [("q3", "d5", 2), ("q3", "d9", 1), ("q1", "d1", 1), ("q1", "d6", 0), ("q2", "d2", 1), ("q2", "d7", 1)]


def write_tiny_beir(root: Path, qrels_lines: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w") as out:
        for doc_id, title, text in TINY_CORPUS:
            out.write(json.dumps({"_id": doc_id, "title": title, "text": text, "metadata": {}}) + "\n")
    with open(root / "queries.jsonl", "w") as out:
        for qid, text in TINY_QUERIES.items():
            out.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    lines = qrels_lines or [f"{q}\t{d}\t{g}" for q, d, g in TINY_QRELS]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq9\td8\t1\n")
    return root


@pytest.fixture()
def tiny_beir(tmp_path) -> Path:
    return write_tiny_beir(tmp_path / "tiny")


@pytest.fixture(scope="module")
def scifact_test(scifact_dir):
    return load_beir(scifact_dir, "test")


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


# ---- BM25 ----------------------------------------------------------------------------------------------

def test_bm25_stems_and_handles_k_beyond_corpus(tiny_beir):
    data = load_beir(tiny_beir)
    retriever = BM25Retriever(data.corpus)
    doc_ids, scores = retriever.retrieve(["injured runner", "the of and", "zzzunknownword"], k=100)
    assert scores.shape == (3, 10)
    assert all(sorted(ids) == sorted(data.corpus) for ids in doc_ids)  # every document once
    # only stemming makes "injured runner" match "injure ... Runners" in d2
    assert doc_ids[0][0] == "d2" and scores[0][0] > 0
    assert list(scores[0]) == sorted(scores[0], reverse=True)
    assert not scores[1].any() and not scores[2].any()  # stopwords only / unknown words: all zero, no error


def test_bm25_ndcg_on_scifact(scifact_test):
    report = evaluate_reranker(scifact_test, top_k=100, show_progress=False)
    bm25 = report.metrics["bm25"]
    assert report.queries == 300
    assert abs(bm25["ndcg@10"] - 0.686) <= 0.01, bm25
    assert 0.5 < bm25["mrr@10"] < bm25["recall@100"] <= 1.0
    assert "reranker" not in report.metrics


# ---- metrics -------------------------------------------------------------------------------------------

def test_metrics_by_hand():
    qrels = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d5": 1}, "q3": {"d9": 1}}
    run = {
        # ranks: d4 (not judged), d2 (grade 1), d1 (grade 2), d3 (grade 0)
        "q1": {"d4": 0.9, "d2": 0.8, "d1": 0.7, "d3": 0.1},
        # the only relevant document at rank 11: outside every @10 cutoff, inside recall@100
        "q2": {**{f"x{i}": 10.0 - i for i in range(10)}, "d5": -1.0},
        "q_unjudged": {"d1": 1.0},  # ignored
        # q3 has no run at all: it scores 0 and still counts in the mean
    }
    result = evaluate_run(qrels, run, k_values=(10,), recall_k=100)
    # trec_eval nDCG: linear gain, log2(rank + 1) discount
    ndcg_q1 = (1 / math.log2(3) + 2 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
    per_query = result["per_query"]
    assert per_query["ndcg@10"] == pytest.approx({"q1": ndcg_q1, "q2": 0.0, "q3": 0.0})
    assert per_query["mrr@10"] == pytest.approx({"q1": 1 / 2, "q2": 0.0, "q3": 0.0})
    assert per_query["recall@100"] == pytest.approx({"q1": 1.0, "q2": 1.0, "q3": 0.0})
    assert result["mean"] == pytest.approx({"ndcg@10": ndcg_q1 / 3, "mrr@10": 0.5 / 3, "recall@100": 2 / 3})


def test_mrr_cutoff_breaks_ties_as_trec_eval():
    # equal scores: trec_eval ranks the larger doc id first, so "b" is rank 1 and survives a cutoff of 1
    result = evaluate_run({"q": {"b": 1}}, {"q": {"a": 1.0, "b": 1.0}}, k_values=(1,), recall_k=1)
    assert result["mean"] == {"ndcg@1": 1.0, "mrr@1": 1.0, "recall@1": 1.0}


def test_write_trec_run(tmp_path):
    path = tmp_path / "run.txt"
    assert write_trec_run(path, {"q1": {"a": 0.5, "b": 2.0}, "q2": {"c": -1.25}}, tag="bm25") == 3
    assert path.read_text().splitlines() == [
        "q1 Q0 b 1 2.0 bm25", "q1 Q0 a 2 0.5 bm25", "q2 Q0 c 1 -1.25 bm25",
    ]
    with pytest.raises(InputError, match="whitespace"):
        write_trec_run(path, {"q 1": {"a": 1.0}}, tag="bm25")


# ---- reranking evaluation ------------------------------------------------------------------------------

def test_evaluate_reranker_with_tiny_model(tiny_beir, tiny_qwen2_dir, tmp_path):
    from prorank_edge import Reranker

    data = load_beir(tiny_beir)
    run_file = tmp_path / "reranked.txt"
    with Reranker(str(tiny_qwen2_dir), dtype="float32") as reranker:
        report = evaluate_reranker(data, reranker, top_k=5, show_progress=False, run_file=str(run_file))
        q1_cands = report.candidates["q1"]
        expected = reranker.predict([(data.queries["q1"], data.corpus[c.doc_id].full_text) for c in q1_cands])

    assert list(report.metrics) == ["bm25", "reranker"]
    for values in report.metrics.values():
        assert list(values) == ["ndcg@10", "mrr@10", "recall@5"]
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert report.pairs_scored == 3 * 5
    assert report.model["max_length"] and report.model["batch_size"] == 16
    for qid in data.queries:  # every query reranked, over exactly its BM25 candidates
        cands = report.candidates[qid]
        assert len(cands) == 5 and all(c.rerank_score is not None for c in cands)
        ranked = sorted(c.doc_id for c in cands)
        assert sorted(report.runs["reranker"][qid]) == sorted(report.runs["bm25"][qid]) == ranked
    # each score went to the candidate it belongs to
    assert [c.rerank_score for c in q1_cands] == pytest.approx(list(map(float, expected)), abs=1e-4)
    # recall only depends on the candidate set, which reranking does not change
    assert report.metrics["reranker"]["recall@5"] == report.metrics["bm25"]["recall@5"]
    assert len(run_file.read_text().splitlines()) == 15

    summary = json.loads(json.dumps(report.to_dict()))
    assert summary["counts"] == {"queries": 3, "corpus": 10, "candidates": 15, "pairs_scored": 15}
    assert summary["timing"]["pairs_per_s"] > 0
    table = report.format_table().splitlines()
    assert table[1].split() == ["system", "nDCG@10", "MRR@10", "Recall@5"]
    assert [row.split()[0] for row in table[3:5]] == ["bm25", "reranker"]


def test_max_queries_takes_the_first_queries(tiny_beir):
    report = evaluate_reranker(load_beir(tiny_beir), top_k=3, max_queries=2, show_progress=False)
    assert list(report.candidates) == ["q3", "q1"] and report.queries == 2
    assert report.to_dict()["counts"]["candidates"] == 6


# ---- the eval command ----------------------------------------------------------------------------------

def test_eval_command_bm25_only_json_and_run_file(scifact_dir, tmp_path):
    run_file = tmp_path / "bm25.run"
    result = CliRunner().invoke(eval_command, [
        "--data", str(scifact_dir), "--bm25-only", "--output", "json", "--max-queries", "20",
        "--run-file", str(run_file), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert 0.0 < summary["metrics"]["bm25"]["ndcg@10"] <= 1.0
    assert summary["counts"]["queries"] == 20 and summary["model"] is None
    lines = run_file.read_text().splitlines()
    assert len(lines) == 20 * 100  # the default --top-k
    qid, q0, docid, rank, score, tag = lines[0].split()
    assert (qid, q0, rank, tag) == ("1", "Q0", "1", "prorank-edge-bm25") and docid in load_beir(scifact_dir).corpus
    float(score)


def test_eval_command_table_with_tiny_model(tiny_beir, tiny_qwen2_dir):
    result = CliRunner().invoke(eval_command, [
        "--data", str(tiny_beir), "--model", str(tiny_qwen2_dir), "--top-k", "4", "--batch-size", "3", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    rows = [line.split()[0] for line in result.stdout.splitlines()[3:5]]
    assert rows == ["bm25", "reranker"]


def test_eval_command_errors_are_prorank_errors(tiny_beir):
    runner = CliRunner()
    result = runner.invoke(eval_command, ["--data", str(tiny_beir), "--bm25-only", "--model", "x"])
    assert isinstance(result.exception, ProrankError) and "--bm25-only" in str(result.exception)
    result = runner.invoke(eval_command, ["--data", str(tiny_beir), "--split", "train", "--bm25-only"])
    assert isinstance(result.exception, InputError) and "splits here: dev, test" in str(result.exception)


def test_bm25_only_does_not_import_torch(tiny_beir):
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from prorank_edge.commands.eval_cmd import eval_command\n"
        f"result = CliRunner().invoke(eval_command, ['--data', {str(tiny_beir)!r}, '--bm25-only', '--quiet'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
