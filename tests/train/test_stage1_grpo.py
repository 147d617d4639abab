"""Stage 1 (train/stage1_grpo.py): GRPO on a tiny random model made to emit labels, the KL reference after the
warm-up, and the end-of-turn and label warm-ups."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TRAIN_TOPICS, checkpoint_weights, requires_torch, weights_changed, write_train_jsonl

pytest.importorskip("yaml")

from prorank_edge.train.config import load_config  # noqa: E402


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


@pytest.mark.slow
@requires_torch
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_stage1_grpo_runs_and_changes_the_weights(tiny_qwen2_dir, tmp_path, bf16):
    """bf16 also on a CPU without a GPU (transformers refuses bf16 there unless told it runs on the CPU)."""
    pytest.importorskip("trl")
    from prorank_edge.train.stage1_grpo import train_stage1

    model_dir = _label_prone_copy(Path(tiny_qwen2_dir), tmp_path / "label_prone")
    data = write_train_jsonl(tmp_path / "train.jsonl", queries=6)
    config = load_config(None, [
        f"model={model_dir}", f"data.jsonl={data}", "data.dev_queries=2", "max_length=96",
        "stage1.max_steps=2", "stage1.prompts_per_step=2", "stage1.num_generations=4",
        "stage1.max_completion_length=1", "stage1.learning_rate=1e-3", "stage1.eval_steps=0",
        "stage1.save_steps=100", "stage1.logging_steps=1", f"stage1.bf16={str(bf16).lower()}",
    ])
    out = train_stage1(config, tmp_path / "stage1")
    assert weights_changed(checkpoint_weights(model_dir), checkpoint_weights(out))
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    rewards = [e for e in logged if e["event"] == "train" and "rewards/format_reward/mean" in e]
    assert rewards and all("rewards/label_reward/mean" in e for e in rewards)
    assert max(e["rewards/format_reward/mean"] for e in rewards) > 0.5


@pytest.mark.slow
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
    data = write_train_jsonl(tmp_path / "train.jsonl", queries=6)
    config = load_config(None, [
        f"model={model_dir}", f"data.jsonl={data}", "data.dev_queries=2", "max_length=96",
        "stage1.max_steps=1", "stage1.prompts_per_step=2", "stage1.num_generations=4",
        "stage1.max_completion_length=2", "stage1.learning_rate=1e-3", "stage1.eval_steps=0",
        "stage1.save_steps=100", "stage1.logging_steps=1", "stage1.beta=0.1",
        "stage1.end_of_turn_warmup_steps=2", "stage1.end_of_turn_warmup_learning_rate=3e-3",
        "stage1.end_of_turn_warmup_label=true",
    ])
    out = train_stage1(config, tmp_path / "stage1")
    # the warm-up did change the model
    assert weights_changed(checkpoint_weights(model_dir), checkpoint_weights(out / WARMED_REFERENCE))
    # A whole checkpoint, so the warm-up alone can be scored (evidence.py) like any other.
    assert {"tokenizer.json", "prorank_contract.json"} <= {p.name for p in (out / WARMED_REFERENCE).iterdir()}
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    first = next(e for e in logged if e["event"] == "train" and "kl" in e)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)
    assert first["entropy"] > 0.1  # sampled, not certain, tokens: a KL of 0 is not a degenerate one


@pytest.mark.slow
@pytest.mark.parametrize("autocast", ["fp32", "bf16"])
def test_end_of_turn_warmup_teaches_ending_the_turn_after_a_label(tiny_qwen2_dir, autocast):
    import torch

    from prorank_edge.train.common import load_model_and_tokenizer
    from prorank_edge.train.stage1_grpo import end_of_turn_ids, end_of_turn_warmup

    torch.manual_seed(0)
    model, tokenizer, prompts = load_model_and_tokenizer(str(tiny_qwen2_dir), 96)
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_id in end_of_turn_ids(tokenizer)
    pairs = [(f"why do {t}", f"{t} fact {k}", k % 2) for t in TRAIN_TOPICS for k in range(2)]
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


@pytest.mark.slow
def test_warmup_that_supervises_the_label_makes_both_labels_likely_and_evenly_so(tiny_qwen2_dir):
    import torch

    from prorank_edge.train.common import load_model_and_tokenizer
    from prorank_edge.train.stage1_grpo import end_of_turn_warmup

    torch.manual_seed(0)
    model, tokenizer, prompts = load_model_and_tokenizer(str(tiny_qwen2_dir), 96)
    pairs = [(f"why do {t}", f"{t} fact {k}", k % 2) for t in TRAIN_TOPICS for k in range(2)]
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


def test_stage1_refuses_a_lora_that_continues_an_adapter(tmp_path):
    """`lora.from_adapter` continues a shipped adapter in stage 2; stage 1 says so before loading anything."""
    from prorank_edge.errors import ProrankError
    from prorank_edge.train.stage1_grpo import train_stage1

    config = load_config(None, ["model=" + str(tmp_path / "nowhere"), f"data.jsonl={tmp_path / 't.jsonl'}",
                                "lora.enabled=true", "lora.from_adapter=true"])
    with pytest.raises(ProrankError, match="stage 2 only"):
        train_stage1(config, tmp_path / "stage1")
