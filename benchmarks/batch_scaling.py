#!/usr/bin/env python
"""How `prorank-edge batch` scales with workers on one machine: docs/s for each engine and worker count.

SciFact test queries with their BM25 top-k candidates are written once as a batch JSONL file; each
configuration then runs `prorank-edge batch` as its own process, as a user would, and its JSON summary gives
the figures. Two rates are reported: `job docs/s` counts the whole command (Ray start-up and model loads
included), `steady docs/s` only the scoring, i.e. what a long job approaches (pairs over the busiest worker's
scoring seconds). Every worker gets --threads CPU threads (default 1), so `per core` is comparable across rows.

    python benchmarks/batch_scaling.py                                  # the figures for docs/batch.md
    python benchmarks/batch_scaling.py --queries 4 --top-k 4 --label smoke --output-dir /tmp/scaling-smoke

Needs the eval extra (BM25) and, for the ray rows, the ray extra. Run it on a quiet machine: other processes on
the same cores make every figure, and the 2-worker ones most, lower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The SciFact copy this project's machines share; elsewhere pass --data.
LOCAL_SCIFACT = REPO.parent / "shared" / "data" / "beir" / "scifact"
DEFAULT_CONFIGS = "local:1,local:2,ray:1,ray:2,local:1x2"


def parse_configs(text: str) -> list[tuple[str, int, int | None]]:
    """`engine:workers[xthreads]`, comma-separated; threads default to --threads."""
    configs = []
    for item in text.split(","):
        engine, _, rest = item.strip().partition(":")
        workers, _, threads = rest.partition("x")
        if engine not in ("local", "ray") or not workers.isdigit():
            raise SystemExit(f"--configs: {item!r} is not engine:workers[xthreads] (engine local or ray)")
        configs.append((engine, int(workers), int(threads) if threads else None))
    return configs


def write_input(data_dir: Path, queries: int, top_k: int, path: Path) -> int:
    """The first `queries` SciFact test queries with their BM25 top-k, as batch JSONL; returns the pair count."""
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.evaluation.bm25 import BM25Retriever

    data = load_beir(data_dir, "test")
    qids = list(data.queries)[:queries]
    doc_lists, scores = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], top_k)
    pairs = 0
    with open(path, "w", encoding="utf-8") as out:
        for qid, docs, row in zip(qids, doc_lists, scores.tolist()):
            candidates = [{"id": d, "title": data.corpus[d].title, "text": data.corpus[d].text, "score": s}
                          for d, s in zip(docs, row)]
            pairs += len(candidates)
            out.write(json.dumps({"query_id": qid, "query": data.queries[qid], "candidates": candidates}) + "\n")
    return pairs


def run_config(args, source: Path, workdir: Path, engine: str, workers: int, threads: int) -> dict:
    output = workdir / f"{engine}-{workers}x{threads}.jsonl"
    command = [sys.executable, "-m", "prorank_edge.cli", "batch", "-i", str(source), "-o", str(output),
               "--engine", engine, "--workers", str(workers), "--threads", str(threads),
               "--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size), "--quiet"]
    if args.model:
        command += ["--model", args.model]
    if args.dtype:
        command += ["--dtype", args.dtype]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    busiest = max(w["seconds"] for w in summary["per_worker"])
    steady = summary["pairs"] / busiest if busiest > 0 else 0.0
    return {
        "engine": engine, "workers": workers, "threads_per_worker": threads, "cores": workers * threads,
        "pairs": summary["pairs"], "wall_s": round(wall, 2), "job_seconds": summary["seconds"],
        "job_docs_per_s": round(summary["pairs"] / wall, 2),
        "steady_docs_per_s": round(steady, 2), "per_core_docs_per_s": round(steady / (workers * threads), 2),
        "workers_used": len(summary["per_worker"]),
        "per_worker": summary["per_worker"],
    }


def compare(outputs: list[list[dict]]) -> dict:
    """Every configuration must write every pair once, query by query; a scaling figure for a wrong answer is no
    figure. Scores may differ in the last digits (bf16 sums depend on how many threads split them)."""
    def pairs(rows):
        grouped: dict[str, list[str]] = {}
        for r in rows:
            grouped.setdefault(r["query_id"], []).append(r["doc_id"])
        return [(q, sorted(docs)) for q, docs in grouped.items()], len(rows)

    first = outputs[0]
    same = all(pairs(rows) == pairs(first) for rows in outputs[1:])
    diff = 0.0
    if same:
        reference = {(r["query_id"], r["doc_id"]): r["score"] for r in first}
        diff = max((abs(r["score"] - reference[r["query_id"], r["doc_id"]]) for rows in outputs for r in rows),
                   default=0.0)
    return {"same_pairs": same, "max_score_difference": diff}


def markdown(report: dict) -> str:
    lines = [f"# batch scaling ({report['label']})", "",
             f"{report['queries']} SciFact test queries x BM25 top {report['top_k']} = {report['pairs']} pairs, "
             f"model {report['model'] or 'built-in'}, shard size {report['shard_size']}, batch size "
             f"{report['batch_size']}; {report['machine']}, {report['cpus']} CPUs, load average "
             f"{report['load_average_before']} at the start, {report['date']}.", "",
             "| engine | workers | threads each | job docs/s | steady docs/s | per core | speed-up (steady) | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = {}
    for row in report["rows"]:
        base.setdefault(row["engine"], row["steady_docs_per_s"] / row["cores"] if row["cores"] else 0.0)
    for row in report["rows"]:
        one_core = base[row["engine"]]
        speedup = row["steady_docs_per_s"] / one_core if one_core else 0.0
        lines.append(f"| {row['engine']} | {row['workers']} | {row['threads_per_worker']} "
                     f"| {row['job_docs_per_s']:.2f} | {row['steady_docs_per_s']:.2f} "
                     f"| {row['per_core_docs_per_s']:.2f} | {speedup:.2f}x | {row['wall_s']:.1f} |")
    lines += ["", "speed-up: steady docs/s over the engine's first row per core. Every configuration wrote the "
              f"same pairs; scores agree within {report['max_score_difference']:.2g}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(LOCAL_SCIFACT), help="BEIR SciFact folder")
    parser.add_argument("--model", default=None, help="--model for prorank-edge batch (default: the built-in one)")
    parser.add_argument("--dtype", default=None, help="--dtype for the torch backend (default: auto)")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--shard-size", type=int, default=2,
                        help="queries per shard; small, so two workers stay balanced to the end")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker (default 1)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"default {DEFAULT_CONFIGS}")
    parser.add_argument("--label", default="measured", help="a word saying what run this is (e.g. smoke)")
    parser.add_argument("--output-dir", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]  # another job on the same cores lowers every figure
    with tempfile.TemporaryDirectory(prefix="batch-scaling-") as tmp:
        workdir = Path(tmp)
        source = workdir / "input.jsonl"
        pairs = write_input(Path(args.data), args.queries, args.top_k, source)
        rows = []
        for engine, workers, threads in parse_configs(args.configs):
            row = run_config(args, source, workdir, engine, workers, threads or args.threads)
            print(f"{engine} x{workers} ({row['threads_per_worker']} threads each): {row['steady_docs_per_s']:.2f} "
                  f"steady docs/s, {row['job_docs_per_s']:.2f} job docs/s", file=sys.stderr)
            rows.append(row)
        outputs = [[json.loads(line) for line in p.read_text().splitlines()] for p in sorted(workdir.glob("*x*.jsonl"))]
    from prorank_edge.batch.local import available_cpus

    report = {"label": args.label, "date": date.today().isoformat(), "machine": platform.processor() or
              platform.machine(), "cpus": available_cpus(), "load_average_before": round(load_before, 2),
              "queries": args.queries, "top_k": args.top_k, "pairs": pairs, "model": args.model,
              "shard_size": args.shard_size, "batch_size": args.batch_size, "rows": rows,
              **compare(outputs)}
    stem = "batch_scaling" if args.label == "measured" else f"batch_scaling-{args.label}"
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    if not report["same_pairs"]:
        raise SystemExit("the configurations wrote different pairs")


if __name__ == "__main__":
    main()
