"""Stage 1, prompt warm-up with GRPO (TRL): the model learns to answer the scoring prompt with exactly "0" or "1".

Each prompt is the contract prompt of one (query, document) pair, as token ids from `PromptBuilder`: TRL would
re-tokenize a text prompt (and some tokenizers add a BOS token), so the trainer is handed the exact ids. Two
rewards, logged separately by TRL: `format_reward` (the completion is one label token, optionally followed by
end-of-turn tokens) and `label_reward` (its first token, the one the score reads, is the correct label).
Positives and negatives are balanced within every step: each step's prompts are (positive, negative) couples
of one query, so the group-relative advantages reward telling them apart, not answering one label to all.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import ProrankError
from .common import (
    RESUME_DIR,
    JsonlLog,
    check_process_count,
    keep_if_best,
    launched_as_rank_0,
    load_model_and_tokenizer,
    peft_config,
    read_best,
    save_checkpoint,
    set_seed,
)
from .config import TrainConfig
from .data import TrainingData, balanced_pairs, load_training_data

#: inside output_dir: the warmed-up model that GRPO's KL term (beta > 0) measures the policy against
WARMED_REFERENCE = "warmed_reference"


def end_of_turn_ids(tokenizer) -> set[int]:
    """Tokens allowed after the label: the tokenizer's EOS and the chat end-of-turn marker where it has one."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids


def make_rewards(positive_id: int, negative_id: int, end_ids: set[int]):
    """The two reward functions, in TRL's signature (named so TRL logs them as rewards/<name>/mean)."""

    def well_formed(ids) -> bool:
        ids = list(ids)
        return bool(ids) and ids[0] in (positive_id, negative_id) and all(t in end_ids for t in ids[1:])

    def format_reward(completion_ids, **kwargs) -> list[float]:
        return [1.0 if well_formed(ids) else 0.0 for ids in completion_ids]

    def label_reward(completion_ids, label, **kwargs) -> list[float]:
        wanted = lambda y: positive_id if y else negative_id  # noqa: E731
        return [1.0 if len(ids) and ids[0] == wanted(y) else 0.0 for ids, y in zip(completion_ids, label)]

    return format_reward, label_reward


def end_of_turn_warmup(model, token_ids: list[list[int]], labels: list[int], positive_id: int, negative_id: int,
                       end_id: int, steps: int, batch_size: int, learning_rate: float, log=None,
                       supervise_label: bool = False, autocast_dtype: torch.dtype | None = None) -> list[float]:
    """Teach the model to end its turn after a label: cross-entropy on the end-of-turn token (and the label).

    GRPO learns only from differences between a prompt's sampled completions; SmolLM2-135M follows "0"/"1"
    with "." and ends its turn with p ~ 1e-4, so no sample earns the format reward and nothing is learned
    (DeepSeek-R1's "cold start" runs a little supervised data before RL for the same reason). Each example is
    the prompt, its correct label, then end-of-turn. By default the loss reads only the end-of-turn position,
    so which label to answer is left to GRPO. With `supervise_label` it also reads the label position, on
    balanced couples. A few such steps mostly set the prior of "1" against "0" near even, which matters
    because GRPO's expected push on a binary answer scales with p(1 - p) (from a policy that answers "0" to
    everything it barely moves); a pass over the couples (100 steps for SmolLM2-135M) teaches the label
    itself, which GRPO alone never did (docs/training.md, "Evidence on a CPU"). `autocast_dtype`
    (bf16 when stage 1 runs in bf16) autocasts the forward pass, as GRPO's steps are. Returns each step's loss.
    """
    from ..contract import left_pad, position_ids

    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                                  weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        rows = [(step * batch_size + i) % len(token_ids) for i in range(batch_size)]
        sequences = [list(token_ids[r]) + [positive_id if labels[r] else negative_id] for r in rows]
        ids, mask = left_pad(sequences)
        tensors = [torch.from_numpy(a).to(device) for a in (ids, mask, position_ids(mask))]
        # Left padding puts every sequence's label at the last position, whose next token is end-of-turn;
        # the position before it is the scoring position, whose next token is the label.
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=tensors[0], attention_mask=tensors[1], position_ids=tensors[2],
                           logits_to_keep=2).logits.float()
        end_target = torch.full((len(rows),), end_id, dtype=torch.long, device=device)
        loss = torch.nn.functional.cross_entropy(logits[:, -1, :], end_target)
        if supervise_label:
            label_target = torch.tensor([s[-1] for s in sequences], dtype=torch.long, device=device)
            loss = (loss + torch.nn.functional.cross_entropy(logits[:, -2, :], label_target)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if log is not None:
            log.write("end_of_turn_warmup", step=step + 1, loss=losses[-1], supervise_label=supervise_label,
                      **({} if supervise_label else {"p_end_of_turn": math.exp(-losses[-1])}))
    optimizer.zero_grad(set_to_none=True)
    return losses


def _trainer_class():
    from trl import GRPOTrainer

    class ContractPromptGRPOTrainer(GRPOTrainer):
        """GRPOTrainer fed the contract's token ids instead of tokenizing prompt text itself."""

        def __init__(self, *args, prompt_ids: dict[str, list[int]], **kwargs):
            self._contract_prompt_ids = prompt_ids
            super().__init__(*args, **kwargs)

        def _tokenize_prompts(self, prompts):  # trl 1.16: returns (prompt_ids, images, multimodal_fields)
            try:
                return [list(self._contract_prompt_ids[p]) for p in prompts], None, {}
            except KeyError:
                raise ProrankError("a stage-1 prompt is not one the contract built (the dataset was altered)") from None

    return ContractPromptGRPOTrainer


def _callback(config: TrainConfig, out: Path, prompts, data: TrainingData, tokenizer, log: JsonlLog, is_main):
    from transformers import TrainerCallback

    stage = config.stage1

    class DevAndLog(TrainerCallback):
        """Logs TRL's metrics to the JSONL log, and keeps the checkpoint with the best dev nDCG@10."""

        def __init__(self):
            self.best = read_best(out).get("ndcg@10")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if is_main() and logs:
                log.write("train", step=state.global_step, **logs)

        def evaluate(self, model, step: int) -> None:
            if not is_main():
                return
            self.best = keep_if_best(model, tokenizer, prompts, data.dev_sample(config.data.dev_eval_queries), out,
                                     log, step, self.best,
                                     autocast_dtype=torch.bfloat16 if stage.bf16 else None)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if stage.eval_steps and state.global_step % stage.eval_steps == 0:
                self.evaluate(model, state.global_step)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if not stage.eval_steps or state.global_step % stage.eval_steps != 0:
                self.evaluate(model, state.global_step)

    return DevAndLog()


def train_stage1(config: TrainConfig, output_dir: str | Path | None = None, resume: bool = False,
                 data: TrainingData | None = None) -> Path:
    """Run GRPO and save the best (by dev nDCG@10; the last without dev queries) merged model in output_dir."""
    from datasets import Dataset
    from trl import GRPOConfig

    stage = config.stage1
    lora = config.lora_for("stage1")
    if lora.enabled and lora.from_adapter:
        raise ProrankError("lora.from_adapter goes on training a shipped adapter, in stage 2 only: stage 1 "
                           "trains a fresh LoRA (put from_adapter under stage2.lora)")
    out = Path(output_dir or stage.output_dir)
    set_seed(config.seed)
    model, tokenizer, prompts = load_model_and_tokenizer(config.model, config.max_length, torch.float32)
    data = data or load_training_data(config.data, config.seed)
    pairs = balanced_pairs(data.groups, config.seed)
    if not pairs:
        raise ProrankError("stage 1: no training pairs (every query lacks positives or negatives)")
    if not stage.max_steps and not stage.end_of_turn_warmup_steps:
        raise ProrankError("stage 1: stage1.max_steps and stage1.end_of_turn_warmup_steps are both 0: nothing "
                           "to train")
    if not stage.max_steps and resume:
        raise ProrankError("stage 1: --resume continues GRPO, and stage1.max_steps is 0 (the warm-up alone); "
                           "run it again without --resume")

    prompt_ids = {}
    rows = {"prompt": [], "label": []}
    for (_, _, label), ids in zip(pairs, prompts.build_pairs((q, d) for q, d, _ in pairs)):
        # The decoded text is only the key (and what TRL logs); generation gets `ids` themselves.
        text = tokenizer.decode(ids)
        prompt_ids[text] = ids
        rows["prompt"].append(text)
        rows["label"].append(label)
    dataset = Dataset.from_dict(rows)

    batch = stage.prompts_per_step * stage.num_generations
    steps_per_epoch = max(1, len(pairs) // stage.prompts_per_step)
    grpo_args = GRPOConfig(
        output_dir=str(out / RESUME_DIR),
        learning_rate=stage.learning_rate,
        max_steps=max(1, stage.max_steps),  # 0 (the warm-up alone) returns before GRPO is built
        num_train_epochs=math.ceil(max(1, stage.max_steps) / steps_per_epoch),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=stage.num_generations,
        max_completion_length=stage.max_completion_length,
        temperature=stage.temperature,
        beta=stage.beta,
        loss_type=stage.loss_type,
        scale_rewards=stage.scale_rewards,
        reward_weights=[stage.format_weight, stage.accuracy_weight],
        warmup_ratio=stage.warmup_ratio,
        weight_decay=stage.weight_decay,
        max_grad_norm=stage.max_grad_norm,
        gradient_checkpointing=stage.gradient_checkpointing,
        bf16=stage.bf16,
        # transformers accepts bf16 without a GPU only when told it runs on the CPU (autocast there, which is
        # fast where the CPU has native bf16: AVX512-BF16 or AMX).
        use_cpu=stage.bf16 and not torch.cuda.is_available(),
        logging_steps=stage.logging_steps,
        save_strategy="steps",
        save_steps=stage.save_steps,
        save_total_limit=1,
        seed=config.seed,
        report_to=[],
        disable_tqdm=False,
        use_vllm=False,
        # `balanced_pairs` alternates positive / negative couples; kept in order, every step holds both labels.
        shuffle_dataset=False,
    )
    check_process_count(grpo_args.world_size)  # before the warm-up spends any time
    log = JsonlLog(out, enabled=launched_as_rank_0())
    if stage.end_of_turn_warmup_steps and not resume:
        # Before GRPO wraps the model (and before LoRA), so a merged LoRA result carries it too.
        end_ids = end_of_turn_ids(tokenizer)
        end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        end_id = end_id if end_id in end_ids else tokenizer.eos_token_id
        warm_ids = [prompt_ids[text] for text in rows["prompt"]]
        end_of_turn_warmup(model, warm_ids, rows["label"], prompts.positive_token_id,
                           prompts.negative_token_id, end_id, stage.end_of_turn_warmup_steps, batch,
                           stage.end_of_turn_warmup_learning_rate, log, stage.end_of_turn_warmup_label,
                           torch.bfloat16 if stage.bf16 else None)
        if not stage.max_steps:
            return _warm_up_alone(config, out, model, tokenizer, prompts, data, log)
        if stage.beta and not lora.enabled:
            _reference_is_warmed_model(model, tokenizer, prompts.contract, out)
    elif resume and stage.beta and (out / WARMED_REFERENCE).is_dir():
        model.config._name_or_path = str(out / WARMED_REFERENCE)
    format_reward, label_reward = make_rewards(prompts.positive_token_id, prompts.negative_token_id,
                                               end_of_turn_ids(tokenizer))
    trainer = _trainer_class()(
        model=model,
        reward_funcs=[format_reward, label_reward],
        args=grpo_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(lora) if lora.enabled else None,
        prompt_ids=prompt_ids,
    )
    is_main = lambda: trainer.accelerator.is_main_process  # noqa: E731
    log.write("start", stage="stage1", config=config.to_dict(), data=data.summary(), pairs=len(pairs),
              resume=resume)
    trainer.add_callback(_callback(config, out, prompts, data, tokenizer, log, is_main))
    trainer.train(resume_from_checkpoint=_last_checkpoint(out) if resume else None)
    log.write("end", step=trainer.state.global_step, best=read_best(out))
    return out


def _warm_up_alone(config: TrainConfig, out: Path, model, tokenizer, prompts, data: TrainingData,
                   log: JsonlLog) -> Path:
    """stage1.max_steps 0: the supervised warm-up is the whole stage (the ablation's "supervised only" arm).

    Saved, scored on dev and logged like a GRPO run's best checkpoint, so stage 2 and the evidence read it alike.
    """
    log.write("start", stage="stage1", config=config.to_dict(), data=data.summary(), warm_up_alone=True)
    if launched_as_rank_0():
        keep_if_best(model, tokenizer, prompts, data.dev_sample(config.data.dev_eval_queries), out, log, 0, None,
                     autocast_dtype=torch.bfloat16 if config.stage1.bf16 else None)
    log.write("end", step=0, best=read_best(out))
    return out


def _reference_is_warmed_model(model, tokenizer, contract, out: Path) -> Path:
    """Make GRPO's KL reference the warmed-up model, not the checkpoint it was loaded from.

    TRL builds the reference (beta > 0, full fine-tuning) by loading `config._name_or_path` again; that would
    be the model before the warm-up, which never answers "0"/"1", so the KL term would pull the policy away
    from the format it was just taught. (With LoRA the reference is the model with the adapter disabled,
    which already is the warmed model.) Saved as a whole checkpoint, so the warm-up alone can be measured too.
    """
    from accelerate import PartialState  # set up by GRPOConfig already

    folder = out / WARMED_REFERENCE
    state = PartialState()
    if state.is_main_process:  # every process warmed up the same model on the same data
        save_checkpoint(model, tokenizer, contract, folder)
    state.wait_for_everyone()
    model.config._name_or_path = str(folder)
    return folder


def _last_checkpoint(out: Path) -> str:
    from transformers.trainer_utils import get_last_checkpoint

    folder = out / RESUME_DIR
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if last is None:
        raise ProrankError(f"{out}: nothing to resume (no checkpoint under {folder}); run without --resume")
    return last
