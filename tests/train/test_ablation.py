"""The stage ablation (train/ablation.py): four arms of one config, each finished by the same stage 2."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import requires_torch, write_topics_beir

pytest.importorskip("yaml")

from prorank_edge.errors import ProrankError  # noqa: E402
from prorank_edge.train import ablation  # noqa: E402
from prorank_edge.train.config import load_config  # noqa: E402


def _events(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_arms_b_to_d_need_both_a_warm_up_and_grpo(tmp_path):
    no_warm_up = load_config(None, ["data.jsonl=x.jsonl", "stage1.end_of_turn_warmup_steps=0"])
    with pytest.raises(ProrankError, match="arms b and d"):
        ablation.check_recipe(no_warm_up, ["a", "b"])
    no_grpo = load_config(None, ["data.jsonl=x.jsonl", "stage1.end_of_turn_warmup_steps=2", "stage1.max_steps=0"])
    with pytest.raises(ProrankError, match="arms c and d"):
        ablation.check_recipe(no_grpo, ["c"])
    ablation.check_recipe(no_warm_up, ["a", "c"])  # what these arms need is there


@pytest.mark.slow
@requires_torch
def test_ablation_runs_each_arm_with_its_own_stage1_and_the_same_stage2(tiny_qwen2_dir, tmp_path, capsys,
                                                                           monkeypatch):
    pytest.importorskip("trl")
    beir = write_topics_beir(tmp_path / "topics")
    shutil.copyfile(beir / "qrels" / "train.tsv", beir / "qrels" / "test.tsv")
    sets = [f"model={tiny_qwen2_dir}", f"data.beir={beir}", "data.dev_queries=2", "data.dev_eval_queries=2",
            "data.dev_top_k=4", "data.hard_negatives=2", "max_length=96",
            "stage1.max_steps=1", "stage1.prompts_per_step=2", "stage1.num_generations=2",
            "stage1.max_completion_length=1", "stage1.eval_steps=0", "stage1.save_steps=100",
            "stage1.logging_steps=1", "stage1.bf16=false",
            "stage1.end_of_turn_warmup_steps=1", "stage1.end_of_turn_warmup_label=true",
            "stage2.max_steps=1", "stage2.groups_per_step=2", "stage2.mixed_precision=no", "stage2.eval_steps=1",
            "stage2.save_steps=1"]
    out = tmp_path / "ablation"
    argv = ["--config", str(tmp_path / "none.yaml"), "--output-dir", str(out), "--test-queries", "3",
            "--top-k", "4", "--label-pairs", "4"] + [arg for s in sets for arg in ("--set", s)]
    (tmp_path / "none.yaml").write_text("seed: 0\n")
    assert ablation.main(argv) == 0
    report = json.loads((out / "ablation.json").read_text())
    assert list(report["arms"]) == ["a", "b", "c", "d"]

    # arm a has no stage 1: stage 2 starts from the base model, whose answers are the label figures
    assert "stage1" not in report["arms"]["a"] and report["arms"]["a"]["stage2"]["init_from"] == str(tiny_qwen2_dir)
    # b: the warm-up alone (no GRPO step); c: GRPO alone (no warm-up); d: both
    kinds = {arm: {e["event"] for e in _events(out / arm / "stage1")} for arm in "bcd"}
    grpo_steps = {arm: [e for e in _events(out / arm / "stage1") if e["event"] == "train"
                      and "rewards/label_reward/mean" in e]
                  for arm in "bcd"}
    assert "end_of_turn_warmup" in kinds["b"] and not grpo_steps["b"]
    assert "end_of_turn_warmup" not in kinds["c"] and grpo_steps["c"]
    assert "end_of_turn_warmup" in kinds["d"] and grpo_steps["d"]
    for arm in "bcd":
        entry = report["arms"][arm]
        assert entry["stage2"]["init_from"] == str(out / arm / "stage1")
        assert entry["stage1"]["grpo_steps"] == {"b": 0, "c": 1, "d": 1}[arm]
    for arm, entry in report["arms"].items():
        assert 0.0 <= entry["labels_after_stage1"]["format_success"] <= 1.0
        assert 0.0 <= entry["test"]["ndcg@10"] <= 1.0 and "ndcg@10" in entry["stage2"]["best"]
        # the same stage 2 in every arm: one step, from that arm's start
        stage2 = _events(out / arm / "stage2")
        assert [e["config"]["stage2"]["max_steps"] for e in stage2 if e["event"] == "start"] == [1]
    table = (out / "ablation.md").read_text()
    assert table.count("\n| ") == 1 + 4  # the header row and one row per arm
    assert "BM25 test nDCG@10" in table and "| a | stage 2 alone" in capsys.readouterr().out

    # a second run trains nothing again (a run cut short goes on where it stopped), and keeps the figures of
    # arms already measured instead of scoring them again
    before = {arm: (out / arm / "stage2" / "train_log.jsonl").stat().st_mtime_ns for arm in "abcd"}
    from prorank_edge.train import evidence

    def must_not_score(*args, **kwargs):
        raise AssertionError("a finished, measured arm was scored again")

    monkeypatch.setattr(evidence, "label_answers", must_not_score)
    monkeypatch.setattr(evidence, "test_ndcg", lambda model, *args, **kwargs: (
        must_not_score() if model is not None else {"ndcg@10": report["bm25"]["ndcg@10"]}))
    assert ablation.main(argv + ["--arms", "a,d"]) == 0
    assert json.loads((out / "ablation.json").read_text())["arms"]["d"] == report["arms"]["d"]
    assert all((out / arm / "stage2" / "train_log.jsonl").stat().st_mtime_ns == before[arm] for arm in "abcd")
    # and the arms it did not run again stay in the report
    assert list(json.loads((out / "ablation.json").read_text())["arms"]) == ["a", "b", "c", "d"]


def test_an_arm_is_measured_again_when_a_figure_is_missing_or_a_stage_did_not_finish(tmp_path):
    def log(folder, *events):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train_log.jsonl").write_text("".join(json.dumps({"event": e}) + "\n" for e in events))

    entry = {"arm": "b", "stage1": {}, "labels_after_stage1": {}, "test": {}}
    log(tmp_path / "stage1", "start", "end")
    log(tmp_path / "stage2", "start", "end")
    assert ablation.measured(entry, tmp_path, [("pair",)], {"queries": 3})
    assert not ablation.measured({k: v for k, v in entry.items() if k != "test"}, tmp_path, [], {"queries": 3})
    assert ablation.measured({k: v for k, v in entry.items() if k != "test"}, tmp_path, [], {})
    assert not ablation.measured(None, tmp_path, [], {})
    log(tmp_path / "stage1", "start")  # stage 1 cut short: its stage 2 started from another model
    assert not ablation.measured(entry, tmp_path, [], {})
    assert ablation.measured({"arm": "a", "test": {}}, tmp_path, [], {"queries": 3})  # arm a has no stage 1
