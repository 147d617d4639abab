"""Stage 2, fine-grained score learning: a listwise loss on the score itself, logit("1") - logit("0").

Scores come from `last_position_scores`, the function inference uses, so training and inference score identically.
Per query group (positives first, then negatives) the loss is softmax cross-entropy of scores / temperature against
a target distribution: softmax of the positives' grades, zero mass on negatives (one-hot with a single positive).
An optional pointwise BCE on sigmoid(score) keeps scores calibrated around 0. With `stage2.mine_negatives` each step
first scores its groups' drawn negatives with the model as it is and trains on those it ranks highest: once the
model separates BM25's negatives, randomly drawn ones teach little (round 6: 57% of steps had a loss under 0.01).
The loop runs under `accelerate.Accelerator`, so `accelerate launch` spreads it over GPUs (DDP, DeepSpeed ZeRO-2,
FSDP) unchanged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..backends.torch_backend import folded_score_head, last_position_scores, model_body
from ..contract import PromptBuilder, left_pad, position_ids
from ..errors import ProrankError
from .common import (
    RESUME_DIR,
    JsonlLog,
    check_process_count,
    keep_if_best,
    load_model_and_tokenizer,
    lora_from_merged_adapter,
    peft_config,
    read_best,
    resolve_model_dir,
    score_prompts,
    set_seed,
)
from .config import TrainConfig
from .data import Passage, TrainingData, listwise_groups, load_training_data

STATE_FILE = "trainer_state.pt"


def listwise_loss(scores: torch.Tensor, grades: torch.Tensor, temperature: float = 1.0,
                  bce_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Mean loss over groups; `scores` and `grades` are [groups, group size], grade 0 for a negative.

    Target: softmax of the positives' grades (negatives get none), so graded positives share the mass by grade.
    """
    relevant = grades > 0
    if not bool(relevant.any(dim=1).all()):
        raise ValueError("every group needs at least one positive")
    target = torch.softmax(grades.float().masked_fill(~relevant, float("-inf")), dim=1)
    log_probs = torch.log_softmax(scores.float() / temperature, dim=1)
    listwise = -(target * log_probs).sum(dim=1).mean()
    parts = {"listwise": listwise.detach().item()}
    loss = listwise
    if bce_weight:
        bce = F.binary_cross_entropy_with_logits(scores.float(), relevant.float())
        parts["bce"] = bce.detach().item()
        loss = loss + bce_weight * bce
    return loss, parts


class GroupScorer(torch.nn.Module):
    """The language model plus the contract's score, as one module, so DDP/FSDP wrap the whole scoring forward
    (and synchronize its gradients) rather than a body reached around the wrapper."""

    def __init__(self, model, positive_token_id: int, negative_token_id: int):
        super().__init__()
        self.model = model
        self.positive_token_id = positive_token_id
        self.negative_token_id = negative_token_id

    def forward(self, input_ids, attention_mask, positions):
        # The folded head is re-read every step and kept in the graph: its two label rows train with the body.
        row, offset = folded_score_head(self.model, self.positive_token_id, self.negative_token_id, trainable=True)
        return last_position_scores(model_body(self.model), row, offset, input_ids, attention_mask, positions)


def group_scores(scorer, prompts: PromptBuilder, groups: Sequence[tuple[str, list[Passage]]], device) -> torch.Tensor:
    """Scores [groups, group size] of equally sized groups, with gradients, through the shared score code."""
    token_ids = [ids for query, passages in groups for ids in prompts.build(query, [p.text for p in passages])]
    ids, mask = left_pad(token_ids)
    tensors = [torch.from_numpy(a).to(device) for a in (ids, mask, position_ids(mask))]
    return scorer(*tensors).view(len(groups), -1)


def mine_hardest(model, prompts: PromptBuilder, groups: Sequence[tuple[str, list[Passage]]], keep: int,
                 batch_size: int = 16, autocast_dtype: torch.dtype | None = None
                 ) -> tuple[list[tuple[str, list[Passage]]], torch.Tensor]:
    """Each group's positives and the negatives the model ranks highest now (its false positives), with their
    scores [groups, group size]. Scored as the dev evaluation scores (`score_prompts`: no gradient, no dropout):
    mining picks what to train on, and the training pass scores those again with gradients. Groups keep `keep`
    negatives, more where a group has fewer positives than another, so that they all keep one size and stack."""
    token_ids = [ids for query, passages in groups for ids in prompts.build(query, [p.text for p in passages])]
    flat = score_prompts(model, prompts, token_ids, batch_size, autocast_dtype).tolist()
    positive_counts = [sum(p.grade > 0 for p in passages) for _, passages in groups]
    size = min(keep + max(positive_counts), min(len(passages) for _, passages in groups))
    mined, mined_scores, at = [], [], 0
    for (query, passages), positives in zip(groups, positive_counts):
        scores = flat[at:at + len(passages)]
        at += len(passages)
        order = [i for i, p in enumerate(passages) if p.grade > 0]
        negatives = sorted((i for i, p in enumerate(passages) if p.grade <= 0), key=lambda i: -scores[i])
        order += negatives[:size - positives]
        mined.append((query, [passages[i] for i in order]))
        mined_scores.append([scores[i] for i in order])
    return mined, torch.tensor(mined_scores)


def _grades(groups: Sequence[tuple[str, list[Passage]]]) -> torch.Tensor:
    return torch.tensor([[p.grade for p in passages] for _, passages in groups], dtype=torch.float32)


def _equal_size_groups(data: TrainingData, config: TrainConfig, epoch: int) -> list[tuple[str, list[Passage]]]:
    """This epoch's groups, fresh negatives per epoch; groups are cut to one size so they stack into a batch."""
    negatives = config.data.hard_negatives + config.data.random_negatives
    groups = listwise_groups(data.groups, config.data.positives_per_group, negatives, seed=config.group_seed + epoch)
    if not groups:
        raise ProrankError("stage 2: no training groups (every query lacks positives or negatives)")
    size = min(len(p) for _, p in groups)
    positives = config.data.positives_per_group
    out = []
    for query, passages in groups:
        pos = [p for p in passages if p.grade > 0]
        neg = [p for p in passages if p.grade <= 0]
        keep_pos = min(len(pos), positives, size - 1)
        out.append((query, pos[:keep_pos] + neg[: size - keep_pos]))
    return out


def train_stage2(config: TrainConfig, output_dir: str | Path | None = None, resume: bool = False,
                 data: TrainingData | None = None) -> Path:
    """Train and save the best (by dev nDCG@10; the last without dev queries) merged model in output_dir."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    stage = config.stage2
    out = Path(output_dir or stage.output_dir)
    init = stage.init_from or config.stage1.output_dir
    if not (Path(init) / "config.json").is_file() and init == config.stage1.output_dir:
        raise ProrankError(f"stage 2 starts from stage 1's output {init}, which has no model yet: run stage 1 "
                           "first, or set stage2.init_from")
    # Stage 1 run earlier in this process (transformers' TrainingArguments under GRPO) leaves accelerate's
    # process-wide state behind with its own precision, and a new Accelerator refuses another one. The
    # distributed PartialState, set up once per process, is kept.
    if AcceleratorState._shared_state:
        AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=stage.mixed_precision,
                              gradient_accumulation_steps=stage.gradient_accumulation_steps)
    check_process_count(accelerator.num_processes)
    set_seed(config.seed)
    model, tokenizer, prompts = load_model_and_tokenizer(init, config.max_length, torch.float32)
    if stage.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    lora = config.lora_for("stage2")
    if lora.enabled and lora.from_adapter:
        model = lora_from_merged_adapter(model, resolve_model_dir(init), lora)
    elif lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(lora))
    data = data or load_training_data(config.data, config.seed)
    groups_per_epoch = len(listwise_groups(data.groups, config.data.positives_per_group, 1, config.group_seed))
    world = accelerator.num_processes
    steps_per_epoch = max(1, groups_per_epoch // (stage.groups_per_step * world * stage.gradient_accumulation_steps))
    total_steps = stage.max_steps or max(1, math.ceil(stage.epochs * steps_per_epoch))

    scorer = GroupScorer(model, prompts.positive_token_id, prompts.negative_token_id)
    optimizer = torch.optim.AdamW([p for p in scorer.parameters() if p.requires_grad], lr=stage.learning_rate,
                                  weight_decay=stage.weight_decay)
    # Once prepared, accelerate steps the scheduler once per process at every optimizer step (it assumes the
    # global batch grew with the process count), so the schedule is counted in those units: without it, N
    # processes would end the linear decay, and reach a learning rate of 0, after 1/N of the steps.
    scheduler = get_linear_schedule_with_warmup(optimizer, int(stage.warmup_ratio * total_steps) * world,
                                                total_steps * world)
    scorer, optimizer, scheduler = accelerator.prepare(scorer, optimizer, scheduler)

    step = 0
    best = None
    resume_dir = out / RESUME_DIR
    if resume:
        if not (resume_dir / STATE_FILE).is_file():
            raise ProrankError(f"{out}: nothing to resume (no {RESUME_DIR}/{STATE_FILE}); run without --resume")
        accelerator.load_state(str(resume_dir))
        step = torch.load(resume_dir / STATE_FILE, weights_only=True)["step"]
        best = read_best(out).get("ndcg@10")
    log = JsonlLog(out, enabled=accelerator.is_main_process)
    log.write("start", stage="stage2", init_from=str(init), config=config.to_dict(), data=data.summary(),
              total_steps=total_steps, resume_step=step if resume else None)
    dev = data.dev_sample(config.data.dev_eval_queries)

    # No-gradient scoring (dev evaluation, mining) autocasts as the training pass does.
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(stage.mixed_precision)

    def evaluate_and_keep_best() -> None:
        nonlocal best
        if not accelerator.is_main_process:
            return
        plain = accelerator.unwrap_model(scorer).model
        best = keep_if_best(plain, tokenizer, prompts, dev, out, log, step, best, stage.eval_batch_size,
                            autocast_dtype)

    def save_resume_state() -> None:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(resume_dir))
        if accelerator.is_main_process:
            torch.save({"step": step}, resume_dir / STATE_FILE)

    skipped = 0

    def mine_step(micro_batches: list) -> tuple[list, dict]:
        """The step's groups with mined negatives; skipped when every process's mined groups are learned."""
        nonlocal skipped
        plain = accelerator.unwrap_model(scorer).model
        mined, losses = [], []
        for micro_batch in micro_batches:
            groups_mined, scores = mine_hardest(plain, prompts, micro_batch, stage.mine_negatives,
                                                stage.eval_batch_size, autocast_dtype)
            mined.append(groups_mined)
            losses.append(listwise_loss(scores, _grades(groups_mined), stage.temperature)[0])
        mined_loss = torch.stack(losses).max().reshape(1).to(accelerator.device)
        worst = float(accelerator.gather(mined_loss).max())
        parts = {"mined_loss": float(mined_loss)}
        if worst < stage.skip_loss_below:
            skipped += 1
            parts.update(skipped=True)
        return mined, parts

    batch = stage.groups_per_step
    scorer.train()
    bar = tqdm(total=total_steps, initial=step, desc="stage 2", disable=not accelerator.is_local_main_process)
    micro_per_step = stage.gradient_accumulation_steps
    per_step = batch * micro_per_step
    while step < total_steps:
        epoch, done = divmod(step, steps_per_epoch)
        # Each process takes its own slice of the epoch's groups, so DDP ranks see different groups.
        groups = _equal_size_groups(data, config, epoch)[accelerator.process_index::world]
        for index in range(done, steps_per_epoch):
            chunk = groups[index * per_step:(index + 1) * per_step] or groups[:per_step]
            parts: dict = {}
            micro_batches = [chunk[micro:micro + batch] for micro in range(0, len(chunk), batch)]
            if stage.mine_negatives:
                micro_batches, parts = mine_step(micro_batches)
            if parts.get("skipped"):
                # Nothing to learn from this step's groups: the learning rate still moves on, so that the decay
                # ends where it was planned (accelerate steps its scheduler once per process, see above).
                with warnings.catch_warnings():  # torch warns when the first step is a skipped one: no harm here
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                    for _ in range(world):
                        scheduler.scheduler.step()
                micro_batches = []
            for micro_batch in micro_batches:
                with accelerator.accumulate(scorer), accelerator.autocast():
                    scores = group_scores(scorer, prompts, micro_batch, accelerator.device)
                    loss, loss_parts = listwise_loss(scores, _grades(micro_batch).to(scores.device),
                                                     stage.temperature, stage.bce_weight)
                    parts.update(loss_parts)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and stage.max_grad_norm:
                        parts["grad_norm"] = float(accelerator.clip_grad_norm_(scorer.parameters(),
                                                                               stage.max_grad_norm))
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{parts.get('listwise', float('nan')):.3f}")
            if step % stage.logging_steps == 0 or step == total_steps:
                extra = {"skipped_steps": skipped} if stage.mine_negatives else {}
                log.write("train", step=step, epoch=epoch, lr=scheduler.get_last_lr()[0], **parts, **extra)
            if stage.eval_steps and step % stage.eval_steps == 0:
                evaluate_and_keep_best()
            if stage.save_steps and step % stage.save_steps == 0:
                save_resume_state()
            if step >= total_steps:
                break
    bar.close()
    if not stage.eval_steps or step % stage.eval_steps != 0:
        evaluate_and_keep_best()
    save_resume_state()
    log.write("end", step=step, best=read_best(out) if accelerator.is_main_process else None)
    accelerator.wait_for_everyone()
    return out
