"""`prorank-edge train stage1|stage2`: the two ProRank training stages, configured by a YAML file."""

from __future__ import annotations

import importlib.util
import json

import click

from ..errors import MissingExtraError


def _check_extra() -> None:
    for module, package in (("torch", "torch"), ("transformers", "transformers"), ("trl", "trl"),
                            ("peft", "peft"), ("yaml", "pyyaml"), ("accelerate", "accelerate"), ("bm25s", "bm25s")):
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError("training", "train", package)


def _stage_options(func):
    options = [
        click.option("--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False),
                     help="YAML training config (see train/configs/)."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config key, e.g. --set stage2.learning_rate=1e-4 --set lora.enabled=true "
                          "(repeatable; values are YAML)."),
        click.option("--output", "-o", default=None, type=click.Path(file_okay=False),
                     help="Output folder (default: the stage's output_dir in the config)."),
        click.option("--resume", is_flag=True, help="Continue from the last saved step in the output folder."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run(stage: str, config_path, overrides, output, resume) -> None:
    _check_extra()
    from ..train.config import load_config

    config = load_config(config_path, overrides)
    if stage == "stage1":
        from ..train.stage1_grpo import train_stage1 as train
    else:
        from ..train.stage2_listwise import train_stage2 as train
    out = train(config, output, resume=resume)
    from ..train.common import launched_as_rank_0, read_best

    if launched_as_rank_0():  # one summary per run, not one per launched process
        click.echo(json.dumps({"stage": stage, "model": str(out), "best": read_best(out)}))


@click.group("train")
def train_group() -> None:
    """The two ProRank training stages; each saves a plain checkpoint that `--model PATH` loads.

    \b
    stage1  prompt warm-up: a supervised cold start, then GRPO; answer exactly "0" or "1"
    stage2  listwise score learning on logit("1") - logit("0"), from stage 1's checkpoint

    \b
    Many GPUs: accelerate launch --config_file train/configs/accelerate_ddp.yaml -m prorank_edge.train stage2 ...
    Several CPU processes: the same with ACCELERATE_USE_CPU=1 and --num_processes N --mixed_precision no.
    """


@train_group.command("stage1")
@_stage_options
def stage1_command(config_path, overrides, output, resume) -> None:
    """Prompt warm-up: supervised cold-start steps (end_of_turn_warmup_*), then GRPO (TRL), format and label rewards."""
    _run("stage1", config_path, overrides, output, resume)


@train_group.command("stage2")
@_stage_options
def stage2_command(config_path, overrides, output, resume) -> None:
    """Listwise softmax cross-entropy over each query's group (1 positive + n negatives), optional BCE."""
    _run("stage2", config_path, overrides, output, resume)


@train_group.command("adapter")
@click.option("--model", "-m", required=True, help="The trained checkpoint (e.g. stage 2's output folder).")
@click.option("--base", default="smollm2", show_default=True,
              help="The checkpoint it was trained from ('smollm2': the untrained SmolLM2-135M-Instruct).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Adapter folder to write (prorank_edge/default_adapter makes it the built-in default).")
@click.option("--rank", type=click.IntRange(min=1), default=16, show_default=True,
              help="SVD rank kept per weight matrix: size against fidelity.")
@click.option("--on-adapter", "start_adapter", default=None, type=click.Path(exists=True, file_okay=False),
              help="The adapter the training started from (e.g. prorank_edge/default_adapter for a fine-tune of the "
                   "built-in model): kept exactly, and the rest of the change stored in 1 bit a weight (its sign, "
                   "one scale per row) instead of an SVD; --rank is then not used. A full fine-tune of the built-in "
                   "model adds 17 MB.")
@click.option("--one-bit", is_flag=True,
              help="Store the whole change from --base in 1 bit a weight (a full fine-tune started from the base); "
                   "--on-adapter implies it.")
@click.option("--svd-rank", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --one-bit or --on-adapter: first keep a rank-R SVD of each weight's change (beyond the start "
                   "adapter), and store only what it leaves in 1 bit. On issue 19's round 13 retrained checkpoint "
                   "(dev nDCG@10 0.7307) 16 kept 0.7239 where 0 (signs only) kept 0.7065, for 11.5 MB more.")
@click.option("--distill-steps", type=click.IntRange(min=0), default=40, show_default=True,
              help="With --one-bit or --on-adapter, and --data: steps (one training group each) that fit the 1-bit "
                   "part's row scales so the adapter scores like the checkpoint (on issue 19's round 12: dev "
                   "nDCG@10 0.7008 coded, 0.7101 fitted, 0.7093 the checkpoint). 0 keeps the scales as coded.")
@click.option("--data", "beir", default=None,
              help="BEIR folder of the training run: measure the adapter and tune its BM25 fusion weight on the "
                   "run's held-out dev queries (stored in the adapter's contract).")
@click.option("--split", default="train", show_default=True, help="The training split (its dev queries are used).")
@click.option("--dev-queries", type=click.IntRange(min=1), default=100, show_default=True,
              help="data.dev_queries of the training config (with --seed, picks the same held-out queries).")
@click.option("--seed", default=0, show_default=True, help="seed of the training config.")
@click.option("--top-k", type=click.IntRange(min=1), default=20, show_default=True,
              help="BM25 candidates per dev query.")
@click.option("--max-queries", type=click.IntRange(min=1), default=100, show_default=True,
              help="Dev queries to measure on.")
def adapter_command(model, base, output, rank, start_adapter, one_bit, svd_rank, distill_steps, beir, split,
                    dev_queries, seed, top_k, max_queries) -> None:
    """Store a trained checkpoint as a small adapter over its base (how the default model is made): a low-rank
    SVD of its change, with --one-bit the whole change in 1 bit a weight, or with --on-adapter the adapter it
    started from plus a 1-bit rest (--svd-rank: a low-rank SVD of the change first, the signs code what it
    leaves)."""
    if svd_rank and not (one_bit or start_adapter):
        raise click.UsageError("--svd-rank goes with --one-bit or --on-adapter (a plain SVD adapter takes --rank)")
    _check_extra()
    from ..train.adapter_cmd import build_adapter

    info = build_adapter(model, base, output, rank, beir, split, dev_queries, seed, top_k, max_queries,
                         start_adapter=start_adapter, distill_steps=distill_steps if beir else 0,
                         one_bit=one_bit, svd_rank=svd_rank)
    shown = ("base", "rank", "sign_bits", "svd_rank", "bytes", "distill", "dev")
    click.echo(json.dumps({key: info[key] for key in shown if key in info},
                          indent=2))
    if "fusion_note" in info.get("dev", {}):
        click.echo(f"warning: {info['dev']['fusion_note']}", err=True)
