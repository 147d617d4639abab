"""What each ProRank stage adds: four arms of one config, each finished by the same stage 2.

`python -m prorank_edge.train.ablation --config FILE --output-dir DIR`.

Arms (issue 19), on the same data and with the same stage 2:
  a  stage 2 alone, from the base model;
  b  the supervised warm-up only (stage1.max_steps 0);
  c  GRPO only (stage1.end_of_turn_warmup_steps 0);
  d  the supervised warm-up then GRPO (the config as written: today's recipe).
After stage 1 each arm's model answers held-out label pairs (format success, label accuracy; arm a: the base
model as it is); after stage 2 the report has its best dev nDCG@10 (what picked the checkpoint) and its test
nDCG@10 reranking BM25's top k. An arm whose stage already logged its end is not trained again, so a run cut
short by a session's end goes on where it stopped. Writes ablation.json and ablation.md in --output-dir.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ProrankError
from .common import read_best
from .config import TrainConfig, load_config

ARMS = {
    "a": "stage 2 alone (from the base model)",
    "b": "supervised warm-up, then stage 2",
    "c": "GRPO, then stage 2",
    "d": "supervised warm-up and GRPO, then stage 2",
}


def stage1_overrides(arm: str) -> list[str]:
    """The --set assignments that turn the config's stage 1 (warm-up then GRPO) into the arm's."""
    return {"a": [], "b": ["stage1.max_steps=0"], "c": ["stage1.end_of_turn_warmup_steps=0"], "d": []}[arm]


def check_recipe(config: TrainConfig, arms: list[str]) -> None:
    """Arms b, c and d differ only if the config has both a warm-up and GRPO steps."""
    stage = config.stage1
    if any(arm in "bd" for arm in arms) and not stage.end_of_turn_warmup_steps:
        raise ProrankError("ablation: stage1.end_of_turn_warmup_steps is 0, so arms b and d have no supervised "
                           "warm-up; set it in the config")
    if any(arm in "cd" for arm in arms) and not stage.max_steps:
        raise ProrankError("ablation: stage1.max_steps is 0, so arms c and d have no GRPO; set it in the config")


def finished(folder: Path) -> bool:
    """The stage's log holds its "end" event (its best checkpoint is then final)."""
    log = folder / "train_log.jsonl"
    if not log.is_file():
        return False
    return any(json.loads(line).get("event") == "end" for line in log.read_text().splitlines() if line.strip())


def run_arm(arm: str, base: TrainConfig, config_path: str | None, overrides: list[str], stage1_only: list[str],
            root: Path, label_pairs: list, test: dict, bf16_scoring: bool, log=print) -> dict:
    """Train the arm's stages that have not logged their end, and measure it. `base`: the config with the
    overrides of every stage (what main loaded)."""
    from .evidence import label_answers, test_ndcg
    from .stage1_grpo import train_stage1
    from .stage2_listwise import train_stage2

    folder = root / arm
    stage1_dir, stage2_dir = folder / "stage1", folder / "stage2"
    entry: dict = {"arm": arm, "recipe": ARMS[arm]}
    if arm == "a":
        start = base.model
    else:
        config = load_config(config_path, overrides + stage1_only + stage1_overrides(arm))
        if not finished(stage1_dir):
            log(f"ablation: arm {arm}, stage 1 -> {stage1_dir}")
            train_stage1(config, stage1_dir)
        start = str(stage1_dir)
        entry["stage1"] = {"dir": start, "best": read_best(stage1_dir),
                           "warm_up_steps": config.stage1.end_of_turn_warmup_steps,
                           "grpo_steps": config.stage1.max_steps}
    if label_pairs:
        entry["labels_after_stage1"] = label_answers(start, label_pairs, base.max_length)
    if not finished(stage2_dir):
        log(f"ablation: arm {arm}, stage 2 from {start} -> {stage2_dir}")
        train_stage2(load_config(config_path, overrides + [f"stage2.init_from={start}"]), stage2_dir)
    entry["stage2"] = {"dir": str(stage2_dir), "init_from": start, "best": read_best(stage2_dir)}
    if test:
        entry["test"] = test_ndcg(str(stage2_dir), test["beir"], "test", test["queries"], test["top_k"],
                                  base.max_length, bf16_scoring)
    return entry


def measured(entry: dict | None, folder: Path, label_pairs: list, test: dict) -> bool:
    """An earlier report's entry already holds every figure asked for, of stages that finished: a resumed
    run keeps it instead of scoring the finished arm again (the label pairs and the test set take minutes)."""
    if not entry or not finished(folder / "stage2") or ("stage1" in entry and not finished(folder / "stage1")):
        return False
    return (not label_pairs or "labels_after_stage1" in entry) and (not test or "test" in entry)


def earlier_arms(path: Path, settings: dict) -> dict:
    """The arms an earlier run with the same settings (other than --arms) reported, so that running one arm
    again, or the rest later, keeps the others in the table."""
    if not path.is_file():
        return {}
    try:
        earlier = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    same = {k: v for k, v in earlier.get("settings", {}).items() if k != "arms"} == {
        k: v for k, v in settings.items() if k != "arms"}
    return dict(earlier.get("arms", {})) if same else {}


def markdown(report: dict) -> str:
    settings = report["settings"]
    lines = [f"# Stage ablation: {settings['config']}", "",
             f"Every arm: the same data and the same stage 2 (overrides: {settings['set'] or 'none'}). Label "
             f"figures after stage 1 on {settings['label_pairs']} held-out train pairs (balanced, BM25 hard "
             "negatives); dev nDCG@10 is stage 2's best (it picked the checkpoint); test reranks BM25's top "
             f"{settings['top_k']} of the first {settings['test_queries']} test queries.", ""]
    if "bm25" in report:
        lines += [f"BM25 test nDCG@10: {report['bm25']['ndcg@10']:.4f}", ""]
    lines += ["| arm | recipe | format success | label accuracy | stage 1 dev nDCG@10 | stage 2 dev nDCG@10 "
              "| test nDCG@10 |", "|---|---|---:|---:|---:|---:|---:|"]
    fmt = lambda value: "–" if value is None else f"{value:.4f}"  # noqa: E731
    for arm, entry in report["arms"].items():
        labels = entry.get("labels_after_stage1", {})
        stage1_dev = entry.get("stage1", {}).get("best", {}).get("ndcg@10")
        lines.append(f"| {arm} | {entry['recipe']} | {fmt(labels.get('format_success'))} | "
                     f"{fmt(labels.get('label_accuracy'))} | {fmt(stage1_dev)} | "
                     f"{fmt(entry['stage2']['best'].get('ndcg@10'))} | {fmt(entry.get('test', {}).get('ndcg@10'))} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True,
                        help="training config (both stages), e.g. train/configs/cpu_smollm2.yaml")
    parser.add_argument("--output-dir", required=True, help="one folder per arm, and ablation.json / ablation.md")
    parser.add_argument("--arms", default="a,b,c,d", help="comma-separated arms (default: all four)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every stage of every arm (repeat)")
    parser.add_argument("--stage1-set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for stage 1 only (repeat), e.g. data.random_negatives=3")
    parser.add_argument("--test-queries", type=int, default=300, help="first N test queries (0: no test figure)")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--label-pairs", type=int, default=100, help="held-out label pairs (0: no label figures)")
    parser.add_argument("--bf16", action="store_true", help="score the test queries with bf16 autocast (else fp32)")
    args = parser.parse_args(argv)

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        parser.error(f"--arms: expected some of {','.join(ARMS)}, got {args.arms!r}")
    try:
        base = load_config(args.config, args.overrides)
        check_recipe(base, arms)
        if base.data.beir is None:
            raise ProrankError("ablation: data.beir must be a BEIR folder (the label pairs and the test figure "
                               "come from its train and test splits)")
        root = Path(args.output_dir)
        root.mkdir(parents=True, exist_ok=True)
        report: dict = {"settings": {"config": args.config, "set": args.overrides, "stage1_set": args.stage1_set,
                                     "arms": arms, "test_queries": args.test_queries, "top_k": args.top_k,
                                     "label_pairs": args.label_pairs, "bf16_scoring": args.bf16,
                                     "max_length": base.max_length}, "arms": {}}
        report["arms"] = earlier_arms(root / "ablation.json", report["settings"])

        def write() -> None:
            report["arms"] = dict(sorted(report["arms"].items()))
            (root / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
            (root / "ablation.md").write_text(markdown(report))
        from .evidence import label_pairs, test_ndcg

        pairs = label_pairs(base.data.beir, base.data.split, base.data.dev_queries, args.label_pairs,
                            base.seed) if args.label_pairs else []
        test = {"beir": base.data.beir, "queries": args.test_queries, "top_k": args.top_k} if args.test_queries else {}
        if test:
            report["bm25"] = test_ndcg(None, base.data.beir, "test", args.test_queries, args.top_k, base.max_length)
        log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
        for arm in arms:
            if measured(report["arms"].get(arm), root / arm, pairs, test):
                log(f"ablation: arm {arm} finished and measured by an earlier run (kept)")
                continue
            report["arms"][arm] = run_arm(arm, base, args.config, args.overrides, args.stage1_set, root, pairs,
                                          test, args.bf16, log=log)
            write()
        write()
    except ProrankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
