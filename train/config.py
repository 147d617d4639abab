"""Training configuration: one YAML file holds the data, LoRA and both stages; `--set key=value` overrides it.

Every key has a default here, so a config file only states what differs. Unknown keys are errors, so a typo
never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ProrankError


class ConfigError(ProrankError):
    """A training config file or --set override that cannot be used."""


@dataclass
class DataConfig:
    #: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) ...
    beir: str | None = None
    split: str = "train"
    #: ... or a JSONL of {"query", "positives", "negatives"} records
    jsonl: str | None = None
    #: judged documents per group (graded positives share one group and become soft targets)
    positives_per_group: int = 1
    hard_negatives: int = 7
    random_negatives: int = 0
    #: hard negatives are drawn from the unjudged documents among BM25's top `bm25_depth`
    bm25_depth: int = 50
    #: up to this many of a query's hard negatives are drawn first from those judged positive for another
    #: training query. SciFact's queries share positives, and the round-5 model learnt a document prior from it:
    #: on the dev queries it ranks such documents, when not relevant, at percentile 0.65 among the non-relevant
    #: candidates (BM25: 0.51) and above a positive 14% of the time (other negatives: 7%)
    other_query_positives: int = 0
    #: adds up to this many groups made from the corpus itself (weak supervision, no qrels read): a document's last
    #: sentence (a SciFact abstract's conclusion reads like a claim) is the query, the document without that
    #: sentence its positive, and `hard_negatives` of BM25's top `bm25_depth` for that sentence its negatives.
    #: Every document can be such a positive, unlike the few hundred judged ones a document prior is learnt from
    pseudo_queries: int = 0
    #: training queries held out from both stages (never the test split)
    dev_queries: int = 100
    #: how many of them the periodic dev nDCG@10 reranks (a subset keeps evaluation cheap)
    dev_eval_queries: int = 30
    #: BM25 candidates reranked per dev query
    dev_top_k: int = 20
    #: cap on training queries (None: all); useful for quick runs
    max_train_queries: int | None = None
    #: seeds which negatives each stage-2 group draws and the groups' order (None: `seed`); the dev split always
    #: follows `seed`, so a later round can train on new groups while holding out the same dev queries
    group_seed: int | None = None


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    #: stage 2: the LoRA starts as the starting checkpoint's own adapter (the low-rank factors a merged adapter
    #: checkpoint such as "default" keeps) instead of fresh, so that its rank-r delta goes on training and the
    #: result ships as a rank-r adapter again, exactly, instead of one of rank (adapter's + r)
    from_adapter: bool = False
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class Stage1Config:
    """GRPO prompt warm-up: the model learns to answer the scoring prompt with exactly "0" or "1"."""

    output_dir: str = "runs/stage1"
    learning_rate: float = 1e-5
    #: GRPO steps; 0: the supervised warm-up below is the whole stage (the ablation's "supervised only" arm)
    max_steps: int = 100
    #: distinct prompts per optimizer step; each is sampled `num_generations` times
    prompts_per_step: int = 4
    num_generations: int = 4
    max_completion_length: int = 2
    temperature: float = 1.0
    format_weight: float = 0.5
    accuracy_weight: float = 1.0
    #: supervised steps, before GRPO, on the end-of-turn token after a label (0: none). A model that
    #: almost never ends its turn after a label (SmolLM2-135M: p ~ 1e-4) never earns the format reward.
    end_of_turn_warmup_steps: int = 0
    end_of_turn_warmup_learning_rate: float = 1e-4
    #: the warm-up's loss also reads the (balanced) label token: a few steps set the "1"/"0" prior near even,
    #: a pass over the couples teaches the label (the supervised cold start of the CPU config)
    end_of_turn_warmup_label: bool = False
    beta: float = 0.0
    loss_type: str = "dapo"
    #: TRL's advantage scaling: "group" (divide by each prompt's reward std), "batch" or "none" (Dr. GRPO)
    scale_rewards: str = "group"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    bf16: bool = False
    eval_steps: int = 50
    save_steps: int = 50
    logging_steps: int = 5
    #: None: the top-level `lora` section
    lora: LoraConfig | None = None


@dataclass
class Stage2Config:
    """Listwise score learning on logit("1") - logit("0")."""

    output_dir: str = "runs/stage2"
    #: the checkpoint to start from; None: stage 1's output_dir
    init_from: str | None = None
    learning_rate: float = 2e-5
    epochs: float = 1.0
    #: None: as many as `epochs` gives
    max_steps: int | None = None
    groups_per_step: int = 2
    gradient_accumulation_steps: int = 1
    temperature: float = 1.0
    bce_weight: float = 0.0
    #: 0: train on the drawn negatives. N: score every drawn negative of a group with the model as it is now (no
    #: gradient) and train on the N it ranks highest, its current false positives (set data.hard_negatives to
    #: the pool to mine, e.g. BM25's whole top bm25_depth)
    mine_negatives: int = 0
    #: with mine_negatives: a step whose mined groups already have a loss below this (from the mining scores)
    #: updates nothing and skips the forward and backward pass; 0 trains every step
    skip_loss_below: float = 0.0
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    #: "no", "bf16" or "fp16" (accelerate); bf16 autocast also runs on CPUs with native bf16
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    eval_steps: int = 100
    save_steps: int = 100
    logging_steps: int = 10
    eval_batch_size: int = 16
    lora: LoraConfig | None = None


@dataclass
class TrainConfig:
    #: "smollm2" (the untrained SmolLM2-135M-Instruct), "default" (the built-in trained reranker), a checkpoint
    #: folder or a Hugging Face Hub id
    model: str = "smollm2"
    #: whole prompt length, template included; saved into the trained model's contract
    max_length: int = 256
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)

    @property
    def group_seed(self) -> int:
        return self.seed if self.data.group_seed is None else self.data.group_seed

    def lora_for(self, stage: str) -> LoraConfig:
        own = getattr(self, stage).lora
        return own if own is not None else self.lora

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_NESTED = {"data": DataConfig, "lora": LoraConfig, "stage1": Stage1Config, "stage2": Stage2Config}


def _build(cls, values: Any, where: str):
    if values is None:
        return None
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        nested = _NESTED.get(name) if cls in (TrainConfig, Stage1Config, Stage2Config) else None
        if nested is not None:
            kwargs[name] = _build(nested, value, key)
        else:
            kwargs[name] = _check_type(fields[name], value, key)
    return cls(**kwargs)


def _check_type(f: dataclasses.Field, value: Any, key: str) -> Any:
    """Light type checks that catch the usual YAML slips (a quoted number, a list where a scalar belongs)."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif isinstance(default, (int, float)):
        if isinstance(value, str):
            # YAML 1.1 reads 3e-4 (no dot) as a string; numbers are what anyone writing it means.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{key}: expected an integer, got {value!r}")
            value = int(value)
    elif isinstance(default, str) and value is False:
        value = "no"  # YAML 1.1 reads a bare `no` (as in mixed_precision: no) as false
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _yaml():
    try:
        import yaml
    except ImportError:
        from ..errors import MissingExtraError

        raise MissingExtraError("training configs", "train", "pyyaml") from None
    return yaml


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `dotted.key=value` (value parsed as YAML, so 1e-4, true and [a, b] work) to a raw config."""
    yaml = _yaml()
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. stage2.learning_rate=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML") from None
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    yaml = _yaml()
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for assignment in overrides:
        apply_override(data, assignment)
    config = _build(TrainConfig, data, "")
    for name in ("data", "lora", "stage1", "stage2"):
        if getattr(config, name) is None:
            setattr(config, name, _NESTED[name]())
    if config.data.beir is None and config.data.jsonl is None:
        raise ConfigError("data: set data.beir (a BEIR folder) or data.jsonl (a training JSONL file)")
    if config.data.beir is not None and config.data.jsonl is not None:
        raise ConfigError("data: set only one of data.beir and data.jsonl")
    if config.stage1.num_generations < 2:
        raise ConfigError("stage1.num_generations: GRPO needs at least 2 completions per prompt")
    if config.stage1.prompts_per_step < 2 or config.stage1.prompts_per_step % 2:
        raise ConfigError(f"stage1.prompts_per_step: expected an even number (each step takes positive / negative "
                          f"couples), got {config.stage1.prompts_per_step}")
    if config.data.other_query_positives < 0:
        raise ConfigError(f"data.other_query_positives: expected 0 (off) or a count, got "
                          f"{config.data.other_query_positives}")
    if config.data.pseudo_queries < 0:
        raise ConfigError(f"data.pseudo_queries: expected 0 (off) or a count, got {config.data.pseudo_queries}")
    if config.data.pseudo_queries and config.data.jsonl is not None:
        raise ConfigError("data.pseudo_queries reads a BEIR corpus (data.beir); a JSONL has no corpus")
    if config.data.other_query_positives and config.data.jsonl is not None:
        raise ConfigError("data.other_query_positives reads BEIR qrels (data.beir); a JSONL gives its own negatives")
    stage2 = config.stage2
    if stage2.mine_negatives < 0:
        raise ConfigError(f"stage2.mine_negatives: expected 0 (off) or a count, got {stage2.mine_negatives}")
    if stage2.mine_negatives and stage2.mine_negatives >= config.data.hard_negatives + config.data.random_negatives:
        raise ConfigError(f"stage2.mine_negatives: keeping {stage2.mine_negatives} of "
                          f"{config.data.hard_negatives + config.data.random_negatives} drawn negatives chooses "
                          "nothing; draw more (data.hard_negatives) than you keep")
    if stage2.skip_loss_below and not stage2.mine_negatives:
        raise ConfigError("stage2.skip_loss_below needs stage2.mine_negatives: the skip reads the mining scores")
    return config
