"""What both training stages share (train/common.py): the LoRA merge into a plain checkpoint, and refusing a
launch whose processes accelerate does not join."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import checkpoint_weights, fine_tune, requires_torch, weights_changed

pytest.importorskip("yaml")

from prorank_edge.train.data import Passage  # noqa: E402


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
    assert not any("lora" in k for k in checkpoint_weights(out)), "the saved weights still hold LoRA tensors"
    assert weights_changed(checkpoint_weights(Path(tiny_qwen2_dir)), checkpoint_weights(out))

    pairs = [("what do cats eat", "cats eat fish"), ("what do cats eat", "it rained all day")]
    in_memory = Reranker.from_backend(TorchBackend(str(tiny_qwen2_dir), model=merged_copy(model),
                                                   tokenizer=tokenizer, dtype="float32", device="cpu"))
    loaded = Reranker(str(out), dtype="float32", device="cpu")
    assert loaded.contract.max_length == 96
    np.testing.assert_allclose(loaded.predict(pairs), in_memory.predict(pairs), rtol=1e-5, atol=1e-5)


def test_a_launch_that_accelerate_does_not_join_is_refused(monkeypatch):
    from prorank_edge.errors import ProrankError
    from prorank_edge.train.common import check_process_count

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ProrankError, match="ACCELERATE_USE_CPU=1"):
        check_process_count(1)  # what accelerate reports for each of 2 CPU processes it was not told to join
    check_process_count(2)
    monkeypatch.delenv("WORLD_SIZE")
    check_process_count(1)


@requires_torch
def test_keep_if_best_saves_only_a_better_dev_score_and_always_without_dev(monkeypatch, tmp_path):
    import prorank_edge.train.common as common

    scores, saved, logged = iter([0.40, 0.35, 0.50, None]), [], []
    monkeypatch.setattr(common, "dev_ndcg", lambda *args, **kwargs: next(scores))
    monkeypatch.setattr(common, "save_checkpoint", lambda model, tokenizer, contract, out: saved.append(model))

    class Log:
        def write(self, event, **fields):
            logged.append((event, fields))

    prompts = type("Prompts", (), {"contract": None})()
    best = None
    for step in (10, 20, 30, 40):
        best = common.keep_if_best(f"model@{step}", None, prompts, [], tmp_path, Log(), step, best)
        if step == 20:  # 0.35 < 0.40: the step-10 model stays the output
            assert best == 0.40 and common.read_best(tmp_path) == {"step": 10, "ndcg@10": 0.40}
    # 0.40 saved (no best yet), 0.35 not, 0.50 saved; no dev score (None) saves the last model
    assert saved == ["model@10", "model@30", "model@40"]
    assert best is None and common.read_best(tmp_path) == {"step": 40}
    assert [fields["ndcg_at_10"] for _, fields in logged] == [0.40, 0.35, 0.50, None]


@requires_torch
def test_lora_from_adapter_starts_as_the_model_and_saves_at_the_adapters_rank(tiny_qwen2_dir, tmp_path):
    """`lora.from_adapter`: the LoRA begins as the merged adapter itself (same scores), and after training the
    delta from the base is still of the adapter's rank, so `make_adapter` at that rank keeps it exactly; a fresh
    LoRA on top would need twice the rank."""
    import torch

    from prorank_edge.adapter import apply_adapter, make_adapter
    from prorank_edge.errors import ProrankError
    from prorank_edge.train.common import (
        load_model_and_tokenizer,
        lora_from_merged_adapter,
        merged_copy,
        save_checkpoint,
        score_prompts,
    )
    from prorank_edge.train.config import LoraConfig
    from prorank_edge.train.stage2_listwise import GroupScorer, _grades, group_scores, listwise_loss

    trained = fine_tune(tiny_qwen2_dir, tmp_path / "trained", delta_rank=4)
    make_adapter(tiny_qwen2_dir, trained, tmp_path / "adapter", rank=4)
    merged = apply_adapter(tiny_qwen2_dir, tmp_path / "adapter", tmp_path / "merged")
    model, tokenizer, prompts = load_model_and_tokenizer(str(merged), 96)
    ids = prompts.build("what do cats eat", ["cats eat fish", "it rained all day"])
    before = score_prompts(model, prompts, ids)

    with pytest.raises(ProrankError, match="rank 4"):
        lora_from_merged_adapter(model, merged, LoraConfig(enabled=True, r=8, alpha=16, dropout=0.0))
    with pytest.raises(ProrankError, match="keeps none"):
        lora_from_merged_adapter(model, tiny_qwen2_dir, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    model = lora_from_merged_adapter(model, merged, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    np.testing.assert_allclose(score_prompts(model, prompts, ids), before, rtol=1e-4, atol=1e-4)

    groups = [("what do cats eat", [Passage("cats eat fish", 1.0), Passage("it rained", 0.0)])]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    scorer = GroupScorer(model, prompts.positive_token_id, prompts.negative_token_id)
    for _ in range(2):
        listwise_loss(group_scores(scorer, prompts, groups, "cpu"), _grades(groups))[0].backward()
        optimizer.step()
        optimizer.zero_grad()
    after = score_prompts(merged_copy(model), prompts, ids)
    assert np.abs(after - before).max() > 1e-2, "training did not move the adapter"
    out = save_checkpoint(model, tokenizer, prompts.contract, tmp_path / "continued")
    info = make_adapter(tiny_qwen2_dir, out, tmp_path / "continued_adapter", rank=4)
    projections = {name: error for name, error in info["relative_error"].items() if "proj" in name}
    assert projections and max(projections.values()) < 1e-3, projections
