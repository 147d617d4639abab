"""Training data (train/data.py): BEIR mining that keeps grades and never mines a judged document as a negative,
balanced pairs, listwise groups, and JSONL errors that name the file and line."""

from __future__ import annotations

import json

import pytest
from conftest import write_topics_beir, write_train_jsonl

pytest.importorskip("yaml")

from prorank_edge.errors import InputError  # noqa: E402
from prorank_edge.train.config import DataConfig  # noqa: E402
from prorank_edge.train.data import Passage, balanced_pairs, from_beir, listwise_groups, read_jsonl_groups  # noqa: E402


def test_beir_mining_keeps_grades_and_never_uses_judged_documents_as_negatives(tmp_path):
    pytest.importorskip("bm25s")
    from prorank_edge.evaluation.beir import load_beir

    data = load_beir(write_topics_beir(tmp_path / "beir"), "train")
    config = DataConfig(hard_negatives=3, random_negatives=2, bm25_depth=10, dev_queries=2, dev_top_k=5)
    mined = from_beir(data, config, seed=1)
    assert len(mined.groups) == 6 and len(mined.dev) == 2
    assert not {g.query_id for g in mined.groups} & {d.query_id for d in mined.dev}
    for group in mined.groups:
        judged = set(data.qrels[group.query_id])
        assert {(p.doc_id, p.grade) for p in group.positives} == {
            (d, float(g)) for d, g in data.qrels[group.query_id].items() if g > 0}
        negative_ids = [n.doc_id for n in group.negatives]
        assert len(negative_ids) == 5 and len(set(negative_ids)) == 5
        assert not judged & set(negative_ids), "a judged document (even grade 0) was mined as a negative"
    again = from_beir(data, config, seed=1)
    assert [[n.doc_id for n in g.negatives] for g in again.groups] == [[n.doc_id for n in g.negatives]
                                                                       for g in mined.groups]


def test_balanced_pairs_and_listwise_groups():
    from prorank_edge.train.data import QueryGroup

    groups = [QueryGroup("a", "q", [Passage("p1", 1.0), Passage("p2", 2.0)], [Passage(f"n{i}") for i in range(5)]),
              QueryGroup("b", "r", [Passage(f"r{i}", 1.0) for i in range(3)], [Passage("m0")]),
              QueryGroup("c", "s", [Passage("s1", 1.0)], [])]
    pairs = balanced_pairs(groups, seed=0)
    # every positive kept, each followed by a negative of its own query (m0 reused); a query without negatives
    # gives none, so no step sees a lone label
    assert sorted(d for _, d, y in pairs if y) == ["p1", "p2", "r0", "r1", "r2"]
    couples = [pairs[i:i + 2] for i in range(0, len(pairs), 2)]
    assert all(p[2] == 1 and n[2] == 0 and p[0] == n[0] for p, n in couples)
    assert [n[1] for p, n in couples if p[0] == "r"] == ["m0"] * 3
    assert len({n[1] for p, n in couples if p[0] == "q"}) == 2
    assert balanced_pairs(groups, seed=0) == pairs
    lists = listwise_groups(groups[:1], positives_per_group=1, negatives_per_group=3, seed=0)
    assert len(lists) == 2 and all(len(p) == 4 and p[0].grade > 0 and p[1].grade == 0 for _, p in lists)


def test_jsonl_reading_and_errors_name_file_and_line(tmp_path):
    groups = read_jsonl_groups(write_train_jsonl(tmp_path / "ok.jsonl", queries=2))
    assert [p.grade for p in groups[0].positives] == [1.0, 2.0] and len(groups[0].negatives) == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "positives": ["a"], "negatives": ["b"]}) + "\n"
                   + json.dumps({"query": "q", "positives": [{"text": "a", "grade": 0}], "negatives": ["b"]}) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: field 'positives'\[0\]\.grade"):
        read_jsonl_groups(bad)
    bad.write_text("{not json\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:1: invalid JSON"):
        read_jsonl_groups(bad)


def test_a_lone_surrogate_in_training_jsonl_names_the_nested_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positives": ["fine", "\\ud800"], "negatives": ["n"]}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:1: field 'positives\[1\]': invalid Unicode"):
        read_jsonl_groups(bad)


def test_other_query_positives_are_drawn_first_and_never_from_dev_queries(tmp_path):
    """data.other_query_positives: up to N of a query's hard negatives are documents judged positive for another
    training query (what teaches a model not to rank a document by how often it was relevant), never a dev
    query's positives (held out) and never the query's own judged documents; 0 draws exactly as before."""
    pytest.importorskip("bm25s")
    from prorank_edge.evaluation.beir import load_beir

    data = load_beir(write_topics_beir(tmp_path / "beir"), "train")
    base = dict(hard_negatives=3, bm25_depth=32, dev_queries=2, dev_top_k=5)  # depth 32: the whole corpus
    plain = from_beir(data, DataConfig(**base), seed=1)
    assert [[n.doc_id for n in g.negatives] for g in from_beir(data, DataConfig(**base, other_query_positives=0),
                                                                seed=1).groups] == \
        [[n.doc_id for n in g.negatives] for g in plain.groups]
    mined = from_beir(data, DataConfig(**base, other_query_positives=2), seed=1)
    dev = {d.query_id for d in mined.dev}
    train_positives = {d for q in data.qrels if q not in dev for d, g in data.qrels[q].items() if g > 0}
    dev_positives = {d for q in dev for d, g in data.qrels[q].items() if g > 0}
    for group in mined.groups:
        negatives = [n.doc_id for n in group.negatives]
        assert len(negatives) == 3 and not set(negatives) & set(data.qrels[group.query_id])
        # (the third, drawn from the rest, may be one too by chance)
        assert len(set(negatives) & train_positives) >= 2 and not set(negatives) & dev_positives
    # the plain draw meets such documents only by chance (10 of the 29 unjudged documents here)
    assert sum(len({n.doc_id for n in g.negatives} & train_positives) for g in plain.groups) < 2 * len(plain.groups)


def test_other_query_positives_config_errors():
    from prorank_edge.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="other_query_positives: expected 0"):
        load_config(None, ["data.beir=x", "data.other_query_positives=-1"])
    with pytest.raises(ConfigError, match="other_query_positives reads BEIR qrels"):
        load_config(None, ["data.jsonl=x.jsonl", "data.other_query_positives=2"])


def test_pseudo_queries_are_a_documents_last_sentence_with_the_rest_as_positive(tmp_path):
    """data.pseudo_queries: weak supervision from the corpus. The query is a document's last sentence, the
    positive is the title and the other sentences (never the query's sentence itself), the source document is
    never a negative, documents of fewer than 4 sentences are skipped, and 0 builds exactly the groups of before."""
    pytest.importorskip("bm25s")
    from prorank_edge.evaluation.beir import load_beir

    root = write_topics_beir(tmp_path / "beir")
    with (root / "corpus.jsonl").open("a") as corpus:
        for t, topic in enumerate(["moths fly", "seals dive", "wolves howl"]):
            text = (f"We studied {topic} at night. The count was 4.5 per hour (p = 0.01). Results varied by site. "
                    f"These results show that {topic} more often when the moon is full. "
                    "(ABSTRACT TRUNCATED AT 250 WORDS)")
            corpus.write(json.dumps({"_id": f"long{t}", "title": f"On {topic}", "text": text}) + "\n")
        corpus.write(json.dumps({"_id": "short", "title": "x", "text": "One. Two. Three words here now."}) + "\n")
    data = load_beir(root, "train")
    base = dict(hard_negatives=3, bm25_depth=40, dev_queries=2, dev_top_k=5)
    plain = from_beir(data, DataConfig(**base), seed=1)
    with_pseudo = from_beir(data, DataConfig(**base, pseudo_queries=10), seed=1)
    assert [(g.query, [n.doc_id for n in g.negatives]) for g in with_pseudo.groups[: len(plain.groups)]] == \
        [(g.query, [n.doc_id for n in g.negatives]) for g in plain.groups]
    pseudo = with_pseudo.groups[len(plain.groups):]
    assert sorted(g.query_id for g in pseudo) == ["pseudo:long0", "pseudo:long1", "pseudo:long2"]
    for group in pseudo:
        doc_id = group.query_id.removeprefix("pseudo:")
        (positive,) = group.positives
        # the conclusion's opening words and PubMed's truncation mark are cut off the claim
        assert group.query[0].isupper() and group.query.endswith("more often when the moon is full.")
        assert "results show" not in group.query and "TRUNCATED" not in positive.text
        assert group.query not in positive.text and "(p = 0.01). Results varied" in positive.text
        assert positive.text.startswith("On ") and positive.doc_id == doc_id
        assert len(group.negatives) == 3 and doc_id not in {n.doc_id for n in group.negatives}
    assert len(from_beir(data, DataConfig(**base, pseudo_queries=2), seed=1).groups) == len(plain.groups) + 2


def test_pseudo_queries_config_errors():
    from prorank_edge.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="pseudo_queries: expected 0"):
        load_config(None, ["data.beir=x", "data.pseudo_queries=-1"])
    with pytest.raises(ConfigError, match="pseudo_queries reads a BEIR corpus"):
        load_config(None, ["data.jsonl=x.jsonl", "data.pseudo_queries=5"])
