"""Training: data mining, the listwise loss, both stages on a tiny random model, LoRA merge, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_torch

pytest.importorskip("yaml")

from prorank_edge.errors import InputError  # noqa: E402
from prorank_edge.train.config import ConfigError, DataConfig, load_config  # noqa: E402
from prorank_edge.train.data import Passage, balanced_pairs, from_beir, listwise_groups, read_jsonl_groups  # noqa: E402

TOPICS = ["cats purr", "dogs bark", "birds sing", "fish swim", "bees buzz", "cows moo", "frogs croak", "owls hoot"]


def write_beir(root: Path) -> Path:
    """A small BEIR folder: 8 queries, 4 documents per topic, positives graded 1-2, one judged 0 per query."""
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as corpus:
        for t, topic in enumerate(TOPICS):
            for k in range(4):
                corpus.write(json.dumps({"_id": f"d{t}_{k}", "title": topic, "text": f"{topic} fact {k}"}) + "\n")
    with (root / "queries.jsonl").open("w") as queries:
        for t, topic in enumerate(TOPICS):
            queries.write(json.dumps({"_id": f"q{t}", "text": f"why do {topic}"}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"]
    for t in range(len(TOPICS)):
        lines += [f"q{t}\td{t}_0\t2", f"q{t}\td{t}_1\t1", f"q{t}\td{t}_2\t0"]
    (root / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    return root


def write_jsonl(path: Path, queries: int = 12) -> Path:
    with path.open("w") as handle:
        for i in range(queries):
            handle.write(json.dumps({
                "query": f"what do animals of kind {i} eat",
                "positives": [f"animals of kind {i} eat seeds", {"text": f"kind {i} diet is grain", "grade": 2}],
                "negatives": [f"the weather on day {j} was mild" for j in range(4)],
            }) + "\n")
    return path


# ---- data and config --------------------------------------------------------------------------------

def test_beir_mining_keeps_grades_and_never_uses_judged_documents_as_negatives(tmp_path):
    pytest.importorskip("bm25s")
    from prorank_edge.evaluation.beir import load_beir

    data = load_beir(write_beir(tmp_path / "beir"), "train")
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
    groups = read_jsonl_groups(write_jsonl(tmp_path / "ok.jsonl", queries=2))
    assert [p.grade for p in groups[0].positives] == [1.0, 2.0] and len(groups[0].negatives) == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "positives": ["a"], "negatives": ["b"]}) + "\n"
                   + json.dumps({"query": "q", "positives": [{"text": "a", "grade": 0}], "negatives": ["b"]}) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: field 'positives'\[0\]\.grade"):
        read_jsonl_groups(bad)
    bad.write_text("{not json\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:1: invalid JSON"):
        read_jsonl_groups(bad)


def test_config_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  jsonl: x.jsonl\nstage2:\n  learning_rate: 1.0e-5\n")
    config = load_config(path, ["stage2.learning_rate=3e-4", "lora.enabled=true", "stage2.mixed_precision=no"])
    assert config.stage2.learning_rate == 3e-4 and config.lora_for("stage2").enabled
    assert config.stage2.mixed_precision == "no"
    with pytest.raises(ConfigError, match="stage2: unknown key"):
        load_config(path, ["stage2.learning_rte=1"])
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(path, ["stage1.max_steps=lots"])
    with pytest.raises(ConfigError, match="stage1.prompts_per_step: expected an even number.*got 3"):
        load_config(path, ["stage1.prompts_per_step=3"])


@pytest.mark.parametrize("name", ["cpu_smollm2.yaml", "paper_qwen2.5_0.5b.yaml"])
def test_shipped_training_configs_load(name):
    """The README's training commands take these files as they are: every key must be one the config knows."""
    config = load_config(Path(__file__).parents[1] / "train" / "configs" / name)
    assert config.stage1.prompts_per_step % 2 == 0 and config.stage1.output_dir != config.stage2.output_dir
    assert config.stage2.mixed_precision in ("no", "bf16", "fp16")


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


# ---- stages on a tiny model ------------------------------------------------------------------------

def _weights(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


def _changed(before: dict, after: dict) -> bool:
    return any(not np.array_equal(before[k], after[k]) for k in before if k in after)


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
def test_lora_merge_saves_a_plain_checkpoint_that_scores_like_the_merged_model(tiny_qwen2_dir, tmp_path):
    import torch
    from peft import get_peft_model

    from prorank_edge.backends.torch_backend import TorchBackend
    from prorank_edge.reranker import Reranker
    from prorank_edge.train.common import load_model_and_tokenizer, merged_copy, peft_config, save_checkpoint
    from prorank_edge.train.config import LoraConfig
    from prorank_edge.train.stage2_listwise import GroupScorer, _grades, group_scores, listwise_loss

    model, tokenizer, prompts = load_model_and_tokenizer(str(tiny_qwen2_dir), 96)
    model = get_peft_model(model, peft_config(LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0)))
    groups = [("what do cats eat", [Passage("cats eat fish", 1.0), Passage("it rained", 0.0)])]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    scorer = GroupScorer(model, prompts.positive_token_id, prompts.negative_token_id)
    for _ in range(2):  # LoRA's B starts at zero: the second step makes the adapter non-trivial
        listwise_loss(group_scores(scorer, prompts, groups, "cpu"), _grades(groups))[0].backward()
        optimizer.step()
        optimizer.zero_grad()
    out = save_checkpoint(model, tokenizer, prompts.contract, tmp_path / "merged")
    assert {"config.json", "model.safetensors", "prorank_contract.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    assert not any("lora" in k for k in _weights(out)), "the saved weights still hold LoRA tensors"
    assert _changed(_weights(Path(tiny_qwen2_dir)), _weights(out))

    pairs = [("what do cats eat", "cats eat fish"), ("what do cats eat", "it rained all day")]
    in_memory = Reranker.from_backend(TorchBackend(str(tiny_qwen2_dir), model=merged_copy(model),
                                                   tokenizer=tokenizer, dtype="float32", device="cpu"))
    loaded = Reranker(str(out), dtype="float32", device="cpu")
    assert loaded.contract.max_length == 96
    np.testing.assert_allclose(loaded.predict(pairs), in_memory.predict(pairs), rtol=1e-5, atol=1e-5)


@requires_torch
def test_stage2_trains_saves_and_resumes(tiny_qwen2_dir, tmp_path):
    from prorank_edge.reranker import Reranker
    from prorank_edge.train.stage2_listwise import train_stage2

    data = write_jsonl(tmp_path / "train.jsonl", queries=6)
    base = ["model=" + str(tiny_qwen2_dir), f"data.jsonl={data}", "data.dev_queries=2", "data.hard_negatives=2",
            "max_length=96", f"stage2.init_from={tiny_qwen2_dir}", "stage2.mixed_precision=no",
            "stage2.learning_rate=1e-3", "stage2.groups_per_step=2", "stage2.eval_steps=2", "stage2.save_steps=2",
            "stage2.logging_steps=1"]
    out = tmp_path / "stage2"
    train_stage2(load_config(None, base + ["stage2.max_steps=2"]), out)
    assert _changed(_weights(Path(tiny_qwen2_dir)), _weights(out))
    Reranker(str(out), device="cpu").predict([("q", "d")])

    train_stage2(load_config(None, base + ["stage2.max_steps=3"]), out, resume=True)
    events = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    assert starts[-1]["resume_step"] == 2
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3]
    assert (out / "best.json").is_file()


@requires_torch
def test_stage2_under_accelerate_launch_with_two_processes_matches_one_process(tiny_qwen2_dir, tmp_path):
    """DDP (2 CPU processes, gloo), one group each per step, trains the model that one process does with
    two groups per step: same groups, averaged gradients, same learning-rate schedule."""
    import os
    import socket
    import subprocess
    import sys

    from prorank_edge.reranker import Reranker
    from prorank_edge.train.stage2_listwise import train_stage2

    data = write_jsonl(tmp_path / "train.jsonl", queries=10)
    base = ["model=" + str(tiny_qwen2_dir), f"data.jsonl={data}", "data.dev_queries=2", "data.hard_negatives=2",
            "max_length=96", f"stage2.init_from={tiny_qwen2_dir}", "stage2.mixed_precision=no",
            "stage2.learning_rate=1e-3", "stage2.warmup_ratio=0", "stage2.max_steps=3", "stage2.eval_steps=0",
            "stage2.save_steps=0", "stage2.logging_steps=1"]
    single = train_stage2(load_config(None, base + ["stage2.groups_per_step=2"]), tmp_path / "one_process")

    (tmp_path / "config.yaml").write_text("seed: 0\n")  # the settings are the same `--set`s as above
    with socket.socket() as probe:  # a free port for the processes' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The shipped DDP config, as the README launches it, on 2 CPU processes: accelerate's `--cpu` would run a
    # single process (it needs MPI for more), so the launch is the GPU one with ACCELERATE_USE_CPU set.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(Path(__file__).parents[1] / "train" / "configs" / "accelerate_ddp.yaml"), "--num_processes", "2",
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

    pairs = [(f"why do {t}", f"{t} fact {k}") for t in TOPICS for k in range(2)]
    start = Reranker(str(tiny_qwen2_dir), dtype="float32", device="cpu").predict(pairs)
    scores_one = Reranker(str(single), dtype="float32", device="cpu").predict(pairs)
    scores_two = Reranker(str(tmp_path / "two_processes"), dtype="float32", device="cpu").predict(pairs)
    moved = np.abs(scores_one - start).max()
    assert moved > 1e-2
    np.testing.assert_allclose(scores_two, scores_one, atol=0.02 * moved)


def test_a_launch_that_accelerate_does_not_join_is_refused(monkeypatch):
    from prorank_edge.errors import ProrankError
    from prorank_edge.train.common import check_process_count

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ProrankError, match="ACCELERATE_USE_CPU=1"):
        check_process_count(1)  # what accelerate reports for each of 2 CPU processes it was not told to join
    check_process_count(2)
    monkeypatch.delenv("WORLD_SIZE")
    check_process_count(1)


def _label_prone_copy(tiny_dir: Path, target: Path) -> Path:
    """The tiny model, edited so its first generated token is "0" or "1" about half the time each.

    A random-weight model never emits a label, so every reward would be 0 and GRPO would have nothing to learn.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prorank_edge.contract import PromptBuilder

    shutil.copytree(tiny_dir, target)
    model = AutoModelForCausalLM.from_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    prompts = PromptBuilder(tokenizer.backend_tokenizer)
    ids = torch.tensor([prompts.build("a query", ["a document"])[0]])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0, -1]
        head = model.get_output_embeddings().weight
        for label in (prompts.positive_token_id, prompts.negative_token_id):
            head[label] = hidden * (40.0 / hidden.norm() ** 2)
    model.save_pretrained(target)
    return target


@requires_torch
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_stage1_grpo_runs_and_changes_the_weights(tiny_qwen2_dir, tmp_path, bf16):
    """bf16 also on a CPU without a GPU (transformers refuses bf16 there unless told it runs on the CPU)."""
    pytest.importorskip("trl")
    from prorank_edge.train.stage1_grpo import train_stage1

    model_dir = _label_prone_copy(Path(tiny_qwen2_dir), tmp_path / "label_prone")
    data = write_jsonl(tmp_path / "train.jsonl", queries=6)
    config = load_config(None, [
        f"model={model_dir}", f"data.jsonl={data}", "data.dev_queries=2", "max_length=96",
        "stage1.max_steps=2", "stage1.prompts_per_step=2", "stage1.num_generations=4",
        "stage1.max_completion_length=1", "stage1.learning_rate=1e-3", "stage1.eval_steps=0",
        "stage1.save_steps=100", "stage1.logging_steps=1", f"stage1.bf16={str(bf16).lower()}",
    ])
    out = train_stage1(config, tmp_path / "stage1")
    assert _changed(_weights(model_dir), _weights(out))
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    rewards = [e for e in logged if e["event"] == "train" and "rewards/format_reward/mean" in e]
    assert rewards and all("rewards/label_reward/mean" in e for e in rewards)
    assert max(e["rewards/format_reward/mean"] for e in rewards) > 0.5


@requires_torch
def test_stage1_kl_reference_is_the_warmed_up_model(tiny_qwen2_dir, tmp_path):
    """With beta > 0 the KL term measures the policy against the model after the warm-up: at the first step,
    before any GRPO update, the two are the same model and the logged KL is 0 (against the checkpoint as
    loaded, which the warm-up changed, it would not be)."""
    pytest.importorskip("trl")
    from prorank_edge.train.stage1_grpo import WARMED_REFERENCE, train_stage1

    # The random model as it is: its completions are any tokens, whose probabilities the warm-up changes
    # (the label-prone copy puts all its mass evenly on "0" and "1", before and after, so its KL stays 0).
    model_dir = Path(tiny_qwen2_dir)
    data = write_jsonl(tmp_path / "train.jsonl", queries=6)
    config = load_config(None, [
        f"model={model_dir}", f"data.jsonl={data}", "data.dev_queries=2", "max_length=96",
        "stage1.max_steps=1", "stage1.prompts_per_step=2", "stage1.num_generations=4",
        "stage1.max_completion_length=2", "stage1.learning_rate=1e-3", "stage1.eval_steps=0",
        "stage1.save_steps=100", "stage1.logging_steps=1", "stage1.beta=0.1",
        "stage1.end_of_turn_warmup_steps=2", "stage1.end_of_turn_warmup_learning_rate=3e-3",
        "stage1.end_of_turn_warmup_label=true",
    ])
    out = train_stage1(config, tmp_path / "stage1")
    assert _changed(_weights(model_dir), _weights(out / WARMED_REFERENCE))  # the warm-up did change the model
    # A whole checkpoint, so the warm-up alone can be scored (evidence.py) like any other.
    assert {"tokenizer.json", "prorank_contract.json"} <= {p.name for p in (out / WARMED_REFERENCE).iterdir()}
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    first = next(e for e in logged if e["event"] == "train" and "kl" in e)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)
    assert first["entropy"] > 0.1  # sampled, not certain, tokens: a KL of 0 is not a degenerate one


@pytest.mark.parametrize("autocast", ["fp32", "bf16"])
def test_end_of_turn_warmup_teaches_ending_the_turn_after_a_label(tiny_qwen2_dir, autocast):
    import torch

    from prorank_edge.train.common import load_model_and_tokenizer
    from prorank_edge.train.stage1_grpo import end_of_turn_ids, end_of_turn_warmup

    torch.manual_seed(0)
    model, tokenizer, prompts = load_model_and_tokenizer(str(tiny_qwen2_dir), 96)
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_id in end_of_turn_ids(tokenizer)
    pairs = [(f"why do {t}", f"{t} fact {k}", k % 2) for t in TOPICS for k in range(2)]
    token_ids = prompts.build_pairs((q, d) for q, d, _ in pairs)
    labels = [y for *_, y in pairs]
    label = lambda y: prompts.positive_token_id if y else prompts.negative_token_id  # noqa: E731

    @torch.no_grad()
    def p_end(prefixes):
        return float(np.mean([model(torch.tensor([p])).logits[0, -1].softmax(-1)[end_id] for p in prefixes]))

    after_label = [ids + [label(y)] for ids, y in zip(token_ids, labels)]
    before = p_end(after_label), p_end(token_ids)
    losses = end_of_turn_warmup(model, token_ids, labels, prompts.positive_token_id, prompts.negative_token_id,
                                end_id, steps=8, batch_size=8, learning_rate=3e-3,
                                autocast_dtype=torch.bfloat16 if autocast == "bf16" else None)
    model.eval()
    after = p_end(after_label), p_end(token_ids)
    print(f"p(end of turn) after a label {before[0]:.2e} -> {after[0]:.2e}, "
          f"before it {before[1]:.2e} -> {after[1]:.2e}")
    assert losses[-1] < losses[0] / 2
    # From about one in a million to a likely answer (on SmolLM2, 3 steps took it from 1e-4 to 0.6 while
    # the first answer token stayed the same; a random tiny model cannot tell the positions apart as well).
    assert after[0] > max(0.05, 1e4 * before[0])


def test_warmup_that_supervises_the_label_makes_both_labels_likely_and_evenly_so(tiny_qwen2_dir):
    import torch

    from prorank_edge.train.common import load_model_and_tokenizer
    from prorank_edge.train.stage1_grpo import end_of_turn_warmup

    torch.manual_seed(0)
    model, tokenizer, prompts = load_model_and_tokenizer(str(tiny_qwen2_dir), 96)
    pairs = [(f"why do {t}", f"{t} fact {k}", k % 2) for t in TOPICS for k in range(2)]
    token_ids = prompts.build_pairs((q, d) for q, d, _ in pairs)
    labels = [y for *_, y in pairs]

    @torch.no_grad()
    def label_probabilities():
        rows = [model(torch.tensor([ids])).logits[0, -1].softmax(-1) for ids in token_ids]
        return (np.array([float(r[prompts.positive_token_id]) for r in rows]),
                np.array([float(r[prompts.negative_token_id]) for r in rows]))

    one, zero = label_probabilities()
    end_of_turn_warmup(model, token_ids, labels, prompts.positive_token_id, prompts.negative_token_id,
                       tokenizer.convert_tokens_to_ids("<|im_end|>"), steps=16, batch_size=8, learning_rate=3e-3,
                       supervise_label=True)
    model.eval()
    one_after, zero_after = label_probabilities()
    mass_before, mass_after = float(np.mean(one + zero)), float(np.mean(one_after + zero_after))
    share_of_one = float(np.mean(one_after / (one_after + zero_after)))
    print(f"p(0 or 1) at the scoring position {mass_before:.2e} -> {mass_after:.3f}; share of 1 {share_of_one:.2f}")
    assert mass_after > max(0.2, 1000 * mass_before)
    # Balanced labels: the warm-up sets the prior near even, it does not pick one label for every prompt.
    assert 0.25 < share_of_one < 0.75


def test_pairwise_auc_counts_ordered_pairs_and_half_the_ties():
    from prorank_edge.train.evidence import pairwise_auc

    labels = np.array([1, 0, 1, 0])
    assert pairwise_auc(np.array([3.0, 1.0, 2.0, 0.0]), labels) == 1.0
    assert pairwise_auc(np.array([0.0, 1.0, 2.0, 3.0]), labels) == 0.25
    # A constant offset changes the sign of every score, not the order: sign accuracy moves, AUC does not.
    assert pairwise_auc(np.array([3.0, 1.0, 2.0, 0.0]) - 10, labels) == 1.0
    assert pairwise_auc(np.array([1.0, 1.0, 2.0, 0.0]), labels) == 0.875
    assert pairwise_auc(np.array([1.0, 2.0]), np.array([1, 1])) is None


def test_label_pairs_are_balanced_held_out_and_never_call_a_judged_document_negative(tmp_path):
    pytest.importorskip("bm25s")
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.train.evidence import label_pairs, label_pools

    root = write_beir(tmp_path / "beir")
    data = load_beir(root, "train")
    dev = from_beir(data, DataConfig(dev_queries=4, max_train_queries=0), seed=0).dev  # training's split
    by_query = {q.query: q for q in dev}
    text_to_id = {doc.full_text: doc_id for doc_id, doc in data.corpus.items()}
    for kind in ("hard", "random"):
        # The whole pools: each query has one document judged 0 among its BM25 candidates, never a negative.
        positives, negatives = label_pools(str(root), "train", dev_queries=4, seed=0, negatives=kind)
        assert len(positives) == 8 and len(negatives) >= 8
        for pool, is_positive in ((positives, True), (negatives, False)):
            for query, document in pool:
                assert query in by_query  # only the held-out queries
                grade = by_query[query].qrels.get(text_to_id[document])
                assert (grade is not None and grade > 0) if is_positive else grade is None
        if kind == "hard":
            assert {text_to_id[d] for _, d in negatives} <= {c.doc_id for q in dev for c in q.candidates}
        pairs = label_pairs(str(root), "train", dev_queries=4, pairs=12, seed=0, negatives=kind)
        assert sorted(label for _, _, label in pairs) == [0] * 6 + [1] * 6
        assert {(q, d) for q, d, label in pairs if label} <= set(positives)
        assert {(q, d) for q, d, label in pairs if not label} <= set(negatives)
    with pytest.raises(ValueError, match="hard' or 'random"):
        label_pairs(str(root), "train", dev_queries=4, pairs=8, seed=0, negatives="easy")


def test_train_adapter_measures_on_the_queries_training_held_out(tmp_path):
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.train.adapter_cmd import held_out_dev

    data = load_beir(write_beir(tmp_path / "beir"), "train")
    training = from_beir(data, DataConfig(dev_queries=3, hard_negatives=1), seed=0)
    dev = held_out_dev(data, 3, seed=0)
    assert len(training.dev) == 3
    assert sorted(dev.queries) == sorted(q.query_id for q in training.dev) == sorted(dev.qrels)
