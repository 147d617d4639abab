"""Stage 2 (train/stage2_listwise.py): the listwise loss, training on a tiny random model, the untied head's label
rows, save and resume, and two DDP processes matching one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TRAIN_TOPICS, checkpoint_weights, requires_torch, weights_changed, write_train_jsonl

pytest.importorskip("yaml")

from prorank_edge.train.config import load_config  # noqa: E402
from prorank_edge.train.data import Passage  # noqa: E402


def tiny_run(model_dir, data, *overrides: str) -> list[str]:
    """`--set`s of a stage-2 run on a tiny model and training JSONL: 2 dev queries, fp32, plus `overrides`."""
    return ["model=" + str(model_dir), f"data.jsonl={data}", "data.dev_queries=2", "max_length=96",
            f"stage2.init_from={model_dir}", "stage2.mixed_precision=no", *overrides]

# ---- the listwise loss -----------------------------------------------------------------------------

@requires_torch
def test_listwise_loss_targets_follow_grades():
    import torch

    from prorank_edge.train.stage2_listwise import listwise_loss

    scores = torch.tensor([[2.0, 0.0, -1.0]])
    loss, _ = listwise_loss(scores, torch.tensor([[1.0, 0.0, 0.0]]))
    assert loss.item() == pytest.approx(-torch.log_softmax(scores, 1)[0, 0].item(), rel=1e-6)
    # Two graded positives: the target puts e^2 : e^1 of the mass on them, none on the negative.
    grades = torch.tensor([[2.0, 1.0, 0.0]])
    loss, _ = listwise_loss(scores, grades)
    target = torch.tensor([np.e ** 2, np.e, 0.0]) / (np.e ** 2 + np.e)
    expected = -(target * torch.log_softmax(scores, 1)[0]).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with_bce, parts = listwise_loss(scores, grades, bce_weight=0.5)
    assert with_bce.item() > loss.item() and "bce" in parts


# ---- training on a tiny model ----------------------------------------------------------------------

@requires_torch
def test_stage2_loss_falls_on_a_fixed_batch(tiny_qwen2_dir):
    import torch

    from prorank_edge.train.common import load_model_and_tokenizer
    from prorank_edge.train.stage2_listwise import GroupScorer, _grades, group_scores, listwise_loss

    torch.manual_seed(0)
    model, _, prompts = load_model_and_tokenizer(str(tiny_qwen2_dir), 96)
    scorer = GroupScorer(model, prompts.positive_token_id, prompts.negative_token_id)
    groups = [(f"what do kind {i} eat", [Passage(f"kind {i} eat seeds", 1.0)]
               + [Passage(f"weather {j} was mild", 0.0) for j in range(3)]) for i in range(2)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for _ in range(6):
        loss, _ = listwise_loss(group_scores(scorer, prompts, groups, "cpu"), _grades(groups))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.7, losses


@requires_torch
def test_stage2_trains_the_label_rows_of_an_untied_head(qwen_tokenizer_dir, tmp_path):
    from conftest import build_tiny_model

    from prorank_edge.train.common import load_model_and_tokenizer
    from prorank_edge.train.stage2_listwise import GroupScorer, _grades, group_scores, listwise_loss

    untied = build_tiny_model("llama", qwen_tokenizer_dir, tmp_path / "untied")  # Llama: head not tied
    model, _, prompts = load_model_and_tokenizer(str(untied), 96)
    head = model.get_output_embeddings().weight
    assert head.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    groups = [("what do cats eat", [Passage("cats eat fish", 1.0), Passage("weather was mild", 0.0)])]
    loss, _ = listwise_loss(group_scores(GroupScorer(model, prompts.positive_token_id, prompts.negative_token_id),
                                         prompts, groups, "cpu"), _grades(groups))
    loss.backward()
    rows = head.grad.abs().sum(dim=1)
    labels = [prompts.positive_token_id, prompts.negative_token_id]
    assert bool((rows[labels] > 0).all())  # the score's two rows learn...
    rows[labels] = 0
    assert float(rows.sum()) == 0.0  # ...and no other row of the head is touched


@requires_torch
def test_stage2_trains_saves_and_resumes(tiny_qwen2_dir, tmp_path):
    from prorank_edge.reranker import Reranker
    from prorank_edge.train.stage2_listwise import train_stage2

    data = write_train_jsonl(tmp_path / "train.jsonl", queries=6)
    base = tiny_run(tiny_qwen2_dir, data, "data.hard_negatives=2", "stage2.learning_rate=1e-3",
                    "stage2.groups_per_step=2", "stage2.eval_steps=2", "stage2.save_steps=2", "stage2.logging_steps=1")
    out = tmp_path / "stage2"
    train_stage2(load_config(None, base + ["stage2.max_steps=2"]), out)
    assert weights_changed(checkpoint_weights(Path(tiny_qwen2_dir)), checkpoint_weights(out))
    Reranker(str(out), device="cpu").predict([("q", "d")])

    train_stage2(load_config(None, base + ["stage2.max_steps=3"]), out, resume=True)
    events = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    assert starts[-1]["resume_step"] == 2
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3]
    assert (out / "best.json").is_file()


@requires_torch
def test_stage2_after_another_precision_in_the_same_process(tiny_qwen2_dir, tmp_path):
    """Stage 1 then stage 2 from Python: stage 1 leaves accelerate's state at bf16; stage 2 in fp32 must still run."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from prorank_edge.train.stage2_listwise import train_stage2

    AcceleratorState._reset_state()  # whatever an earlier test left, then what stage 1's GRPO leaves behind
    Accelerator(mixed_precision="bf16", cpu=True)
    data = write_train_jsonl(tmp_path / "train.jsonl", queries=6)
    out = train_stage2(load_config(None, tiny_run(
        tiny_qwen2_dir, data, "data.hard_negatives=2", "stage2.max_steps=1", "stage2.groups_per_step=2",
        "stage2.eval_steps=1", "stage2.save_steps=1")), tmp_path / "stage2")
    assert (tmp_path / "stage2" / "best.json").is_file() and out is not None


@pytest.mark.slow
@requires_torch
@pytest.mark.parametrize("negatives", ["drawn", "mined"])
def test_stage2_under_accelerate_launch_with_two_processes_matches_one_process(negatives, tiny_qwen2_dir, tmp_path):
    """DDP (2 CPU processes, gloo), one group each per step, trains the model that one process does with
    two groups per step: same groups, averaged gradients, same learning-rate schedule. Mined: each process mines
    its own group and the skip decision is gathered from both (a threshold no step reaches, so both train)."""
    import os
    import socket
    import subprocess
    import sys

    from prorank_edge.reranker import Reranker
    from prorank_edge.train.stage2_listwise import train_stage2

    data = write_train_jsonl(tmp_path / "train.jsonl", queries=10)
    base = tiny_run(tiny_qwen2_dir, data, "data.hard_negatives=2", "stage2.learning_rate=1e-3",
                    "stage2.warmup_ratio=0", "stage2.max_steps=3", "stage2.eval_steps=0", "stage2.save_steps=0",
                    "stage2.logging_steps=1")
    if negatives == "mined":
        base += ["stage2.mine_negatives=1", "stage2.skip_loss_below=1e-30"]
    single = train_stage2(load_config(None, base + ["stage2.groups_per_step=2"]), tmp_path / "one_process")

    (tmp_path / "config.yaml").write_text("seed: 0\n")  # the settings are the same `--set`s as above
    with socket.socket() as probe:  # a free port for the processes' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The shipped DDP config, as the README launches it, on 2 CPU processes: accelerate's `--cpu` would run a
    # single process (it needs MPI for more), so the launch is the GPU one with ACCELERATE_USE_CPU set.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "train" / "configs" / "accelerate_ddp.yaml"), "--num_processes", "2",
              "--mixed_precision", "no", "--main_process_port", str(port), "-m", "prorank_edge.train", "stage2",
              "--config", str(tmp_path / "config.yaml"), "--output", str(tmp_path / "two_processes")]
    launch += [arg for item in base + ["stage2.groups_per_step=1"] for arg in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run(launch, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [line for line in done.stdout.splitlines() if line.startswith('{"stage"')]
    assert len(summaries) == 1 and json.loads(summaries[0])["model"] == str(tmp_path / "two_processes")

    events = [json.loads(line) for line in (tmp_path / "two_processes" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3]  # one writer, not one per process
    one = [json.loads(line) for line in (single / "train_log.jsonl").read_text().splitlines()]
    # The learning rate follows the same schedule (accelerate steps a prepared scheduler once per process).
    assert [e["lr"] for e in events if e["event"] == "train"] == pytest.approx(
        [e["lr"] for e in one if e["event"] == "train"])

    pairs = [(f"why do {t}", f"{t} fact {k}") for t in TRAIN_TOPICS for k in range(2)]
    start = Reranker(str(tiny_qwen2_dir), dtype="float32", device="cpu").predict(pairs)
    scores_one = Reranker(str(single), dtype="float32", device="cpu").predict(pairs)
    scores_two = Reranker(str(tmp_path / "two_processes"), dtype="float32", device="cpu").predict(pairs)
    moved = np.abs(scores_one - start).max()
    assert moved > 1e-2
    np.testing.assert_allclose(scores_two, scores_one, atol=0.02 * moved)


@requires_torch
def test_group_seed_draws_new_groups_and_keeps_the_dev_split(tmp_path):
    """data.group_seed changes stage 2's groups (negatives and order) but never which queries are held out."""
    from prorank_edge.train.data import load_training_data
    from prorank_edge.train.stage2_listwise import _equal_size_groups

    path = write_train_jsonl(tmp_path / "train.jsonl", queries=12)

    def groups_and_dev(*overrides):
        config = load_config(None, [f"data.jsonl={path}", "data.dev_queries=3", "data.hard_negatives=2", *overrides])
        data = load_training_data(config.data, config.seed)
        groups = [(query, [p.doc_id for p in passages]) for query, passages in _equal_size_groups(data, config, 0)]
        return groups, sorted(d.query_id for d in data.dev)

    default_groups, default_dev = groups_and_dev()
    assert groups_and_dev("data.group_seed=0") == (default_groups, default_dev)
    new_groups, new_dev = groups_and_dev("data.group_seed=1")
    assert new_dev == default_dev
    assert new_groups != default_groups
    # epoch e of group_seed s is epoch e + s of the default: one shuffle stream, shifted
    config = load_config(None, [f"data.jsonl={path}", "data.dev_queries=3", "data.hard_negatives=2"])
    data = load_training_data(config.data, config.seed)
    epoch1 = [(q, [p.doc_id for p in ps]) for q, ps in _equal_size_groups(data, config, 1)]
    assert new_groups == epoch1


# ---- mined negatives ---------------------------------------------------------------------------------

@requires_torch
def test_mining_keeps_the_negatives_the_model_ranks_highest(tiny_qwen2_dir):
    import torch

    from prorank_edge.train.common import load_model_and_tokenizer
    from prorank_edge.train.stage2_listwise import GroupScorer, group_scores, mine_hardest

    torch.manual_seed(0)
    model, _, prompts = load_model_and_tokenizer(str(tiny_qwen2_dir), 96)
    scorer = GroupScorer(model, prompts.positive_token_id, prompts.negative_token_id).eval()
    groups = [(f"what do kind {i} eat", [Passage(f"kind {i} eat seeds", 1.0, "pos")]
               + [Passage(f"note {j}: kind {i} {'eat ' * j}weather", 0.0, f"n{j}") for j in range(6)])
              for i in range(2)]
    # A group with two positives keeps one negative less, so both groups stay one size.
    groups[1][1].insert(1, Passage("kind 1 diet is grain", 2.0, "pos2"))
    mined, mined_scores = mine_hardest(model, prompts, groups, keep=3, batch_size=4)
    with torch.no_grad():
        for (query, passages), (_, kept), kept_scores in zip(groups, mined, mined_scores):
            scores = group_scores(scorer, prompts, [(query, passages)], "cpu")[0].tolist()
            by_id = {p.doc_id: s for p, s in zip(passages, scores)}
            negatives = sorted((p.doc_id for p in passages if p.grade == 0), key=lambda d: -by_id[d])
            positives = [p.doc_id for p in passages if p.grade > 0]
            assert [p.doc_id for p in kept] == positives + negatives[:5 - len(positives)]
            np.testing.assert_allclose(kept_scores.numpy(), [by_id[p.doc_id] for p in kept], atol=1e-4)
    assert mined_scores.shape == (2, 5)


@requires_torch
def test_stage2_with_mined_negatives_trains_and_skips_learned_steps(tiny_qwen2_dir, tmp_path):
    from prorank_edge.train.stage2_listwise import train_stage2

    data = write_train_jsonl(tmp_path / "train.jsonl", queries=6)
    base = tiny_run(tiny_qwen2_dir, data, "data.hard_negatives=4", "stage2.learning_rate=1e-3",
                    "stage2.groups_per_step=2", "stage2.max_steps=2", "stage2.eval_steps=2", "stage2.save_steps=2",
                    "stage2.logging_steps=1", "stage2.mine_negatives=2")
    before = checkpoint_weights(Path(tiny_qwen2_dir))

    def events(out):
        return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]

    trained = train_stage2(load_config(None, base), tmp_path / "mined")
    assert weights_changed(before, checkpoint_weights(trained))
    steps = [e for e in events(trained) if e["event"] == "train"]
    assert all(e["mined_loss"] > 0 and "listwise" in e and e["skipped_steps"] == 0 for e in steps)

    # Every step's mined loss is under an absurd threshold: nothing trains, and the learning rate still decays.
    skipped = train_stage2(load_config(None, base + ["stage2.skip_loss_below=1e9"]), tmp_path / "skipped")
    assert not weights_changed(before, checkpoint_weights(skipped))
    steps = [e for e in events(skipped) if e["event"] == "train"]
    assert [e["skipped_steps"] for e in steps] == [1, 2] and all("listwise" not in e for e in steps)
    assert steps[-1]["lr"] < steps[0]["lr"]


def test_mining_config_errors(tmp_path):
    from prorank_edge.train.config import ConfigError

    path = write_train_jsonl(tmp_path / "train.jsonl", queries=4)
    base = [f"data.jsonl={path}", "data.hard_negatives=4"]
    with pytest.raises(ConfigError, match="mine_negatives: keeping 4 of 4"):
        load_config(None, base + ["stage2.mine_negatives=4"])
    with pytest.raises(ConfigError, match="skip_loss_below needs stage2.mine_negatives"):
        load_config(None, base + ["stage2.skip_loss_below=0.01"])
    with pytest.raises(ConfigError, match="expected 0"):
        load_config(None, base + ["stage2.mine_negatives=-1"])
    assert load_config(None, base + ["stage2.mine_negatives=3"]).stage2.mine_negatives == 3
