"""What both stages share: loading the model, LoRA, saving a plain checkpoint, dev nDCG@10 and the JSONL log."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..backends.torch_backend import folded_score_head, last_position_scores, model_body
from ..contract import PromptBuilder, ScoringContract, left_pad, length_batches, position_ids
from ..errors import ProrankError
from .config import LoraConfig
from .data import DevQuery

#: where a stage keeps what --resume needs, inside its output_dir
RESUME_DIR = "resume"
LOG_FILE = "train_log.jsonl"
BEST_FILE = "best.json"


def resolve_model_dir(spec: str) -> Path:
    """A torch checkpoint folder for `spec` ("smollm2", "default", a folder, or a Hub id)."""
    from ..models import resolve_model

    source = resolve_model(spec)
    if source.kind != "torch":
        raise ProrankError(f"{spec}: a {source.kind} artifact cannot be trained; pass a transformers checkpoint")
    return source.path


def load_model_and_tokenizer(spec: str, max_length: int, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, prompt builder) with the checkpoint's own contract at the training `max_length`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(spec)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    contract = ScoringContract.load(path).replace(max_length=max_length)
    prompts = PromptBuilder(tokenizer.backend_tokenizer, contract)
    return model, tokenizer, prompts


def launched_as_rank_0() -> bool:
    """Rank 0 of a launch (or a single process), read from the launcher's environment, so it holds before
    accelerate is set up and after it is gone."""
    return int(os.environ.get("RANK", "0")) == 0


def check_process_count(num_processes: int) -> None:
    """Refuse a launch whose processes accelerate does not join into one run.

    torchrun (under `accelerate launch`) starts WORLD_SIZE processes; without GPUs accelerate joins them only
    when told to run on the CPU, and otherwise each would train alone as rank 0, every one writing the same
    output folder.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and num_processes != launched:
        raise ProrankError(
            f"launched as {launched} processes, but accelerate runs them as {num_processes}: each would train "
            "alone and overwrite the others' output. Without GPUs, set ACCELERATE_USE_CPU=1 so they train "
            "together (DDP over gloo)")


def peft_config(config: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          target_modules=list(config.target_modules), task_type="CAUSAL_LM")


def lora_from_merged_adapter(model, model_dir: str | Path, config: LoraConfig):
    """A PEFT model whose LoRA is, at the start, the adapter merged into `model` (read from model_dir's
    MERGED_ADAPTER_FOLDER), so it scores exactly as `model` did and training moves that adapter's own factors.

    Each targeted weight gets `B @ A` taken back out and the LoRA set to (B, A), balanced so both hold
    sqrt(singular value) of each direction (the stored factors put all of it in B, which makes Adam move A's
    unit rows far faster than B). Deltas LoRA does not target (the tied embedding, norms) stay merged, frozen.
    """
    from peft import get_peft_model

    from ..adapter import merged_adapter_factors

    factors = merged_adapter_factors(model_dir)
    if factors is None:
        raise ProrankError(f"{model_dir}: lora.from_adapter needs a checkpoint merged from an adapter (such as "
                           "'default'), and this one keeps none")
    targeted = {}
    for name, (b, a) in factors.items():
        module_name = name.removesuffix(".weight")
        if module_name.rsplit(".", 1)[-1] not in config.target_modules:
            continue
        if b.shape[1] != config.r:
            raise ProrankError(f"{model_dir}: its adapter has rank {b.shape[1]} ({name}), lora.r is {config.r}; "
                               "set lora.r to the adapter's rank")
        targeted[module_name] = (torch.from_numpy(b), torch.from_numpy(a))
    with torch.no_grad():
        for module_name, (b, a) in targeted.items():
            weight = model.get_submodule(module_name).weight
            weight.sub_((b @ a).to(weight.dtype))
    model = get_peft_model(model, peft_config(config))
    scaling = config.alpha / config.r
    with torch.no_grad():
        for module_name, (b, a) in targeted.items():
            module = model.base_model.model.get_submodule(module_name)
            root = b.norm(dim=0).clamp_min(1e-12).sqrt()  # |B[:, i]| is the i-th singular value
            module.lora_B["default"].weight.copy_(b / root / scaling)
            module.lora_A["default"].weight.copy_(a * root[:, None])
    return model


def merged_copy(model):
    """A plain transformers model: LoRA folded into the weights (of a copy, so training can go on)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is part of the train extra
        PeftModel = ()
    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model


def save_checkpoint(model, tokenizer, contract: ScoringContract, directory: str | Path) -> Path:
    """A folder `Reranker(path)` loads: config, safetensors weights, tokenizer and the scoring contract.

    Written beside the target and renamed into place, so a crash never leaves a half-written model there.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=directory.parent))
    try:
        plain = merged_copy(model)
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        contract.save(staging)
        # Only the files of a model are replaced; a stage's logs and resume state beside them stay.
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("model*.safetensors*"):
            stale.unlink()
        for item in staging.iterdir():
            os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


@torch.no_grad()
def score_prompts(model, prompts: PromptBuilder, token_ids: Sequence[Sequence[int]], batch_size: int = 16,
                  autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """Scores of a model being trained, with the same code as inference (`last_position_scores`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    body = model_body(model)
    row, offset = folded_score_head(model, prompts.positive_token_id, prompts.negative_token_id)
    scores = np.empty(len(token_ids), dtype=np.float32)
    try:
        for batch in length_batches([len(t) for t in token_ids], batch_size):
            ids, mask = left_pad([token_ids[i] for i in batch])
            tensors = [torch.from_numpy(a).to(device) for a in (ids, mask, position_ids(mask))]
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = last_position_scores(body, row, offset, *tensors)
            scores[batch] = out.float().cpu().numpy()
    finally:
        model.train(was_training)
    return scores


def dev_ndcg(model, prompts: PromptBuilder, dev: Sequence[DevQuery], batch_size: int = 16,
             autocast_dtype: torch.dtype | None = None) -> float | None:
    """Mean nDCG@10 of the model reranking each dev query's candidates (None without dev queries)."""
    if not dev:
        return None
    from ..evaluation.metrics import evaluate_run

    token_ids, owners = [], []
    for query in dev:
        token_ids.extend(prompts.build(query.query, [c.text for c in query.candidates]))
        owners.extend((query.query_id, c.doc_id) for c in query.candidates)
    scores = score_prompts(model, prompts, token_ids, batch_size, autocast_dtype)
    run: dict[str, dict[str, float]] = {q.query_id: {} for q in dev}
    for (qid, doc_id), score in zip(owners, scores):
        run[qid][doc_id] = float(score)
    qrels = {q.query_id: q.qrels for q in dev}
    return float(evaluate_run(qrels, run, k_values=10, recall_k=10)["mean"]["ndcg@10"])


class JsonlLog:
    """Appends one JSON object per event to `train_log.jsonl` (kept across --resume)."""

    def __init__(self, directory: str | Path, enabled: bool = True):
        self.path = Path(directory) / LOG_FILE
        self.enabled = enabled
        self.start = time.time()
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **values) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time_s": round(time.time() - self.start, 2), **values}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return str(value)


def read_best(directory: str | Path) -> dict:
    path = Path(directory) / BEST_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_best(directory: str | Path, **values) -> None:
    Path(directory, BEST_FILE).write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")


def keep_if_best(model, tokenizer, prompts: PromptBuilder, dev: Sequence[DevQuery], out: str | Path, log,
                 step: int, best: float | None, batch_size: int = 16,
                 autocast_dtype: torch.dtype | None = None) -> float | None:
    """Score the model on dev, log it, and save it as the stage's output when it beats `best`.

    Both stages (and stage 1's warm-up alone) keep their output this way. Without dev queries (score None) or
    without a best yet, the model is saved: the last one is then the output. Returns the best score now.
    """
    score = dev_ndcg(model, prompts, dev, batch_size, autocast_dtype)
    log.write("dev", step=step, ndcg_at_10=score)
    if score is not None and best is not None and score <= best:
        return best
    save_checkpoint(model, tokenizer, prompts.contract, out)
    write_best(out, step=step, **({"ndcg@10": score} if score is not None else {}))
    return score


def set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
