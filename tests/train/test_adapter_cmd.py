"""`train adapter` (train/adapter_cmd.py): it measures on the queries both training stages held out."""

from __future__ import annotations

import pytest
from conftest import write_topics_beir

pytest.importorskip("yaml")

from prorank_edge.train.config import DataConfig  # noqa: E402
from prorank_edge.train.data import from_beir  # noqa: E402


def test_train_adapter_measures_on_the_queries_training_held_out(tmp_path):
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.train.adapter_cmd import held_out_dev

    data = load_beir(write_topics_beir(tmp_path / "beir"), "train")
    training = from_beir(data, DataConfig(dev_queries=3, hard_negatives=1), seed=0)
    dev = held_out_dev(data, 3, seed=0)
    assert len(training.dev) == 3
    assert sorted(dev.queries) == sorted(q.query_id for q in training.dev) == sorted(dev.qrels)
