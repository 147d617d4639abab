"""GGUF backend docs/s against n_seq_max (prompts per llama_decode), issue 15.

All prompts of one decode share one KV buffer of n_seq_max x max_length cells, and every token's attention
walks all of them (flash attention skips the masked cells' dot products but still reads their mask), so the
mask walk grows with n_seq_max squared per decode, while the matmuls are cut into n_ubatch (512) tokens
whatever n_seq_max is. This measures where that trade lands, per file, on SciFact test top 20, with the same
Reranker path users run (prefix cache on), best of --repeats passes, each n_seq_max in its own process order
(interleaved), and checks that the scores do not depend on n_seq_max.

    .venv/bin/python benchmarks/gguf_seq_sweep.py --gguf a.gguf [b.gguf ...] --n-seq-max 1,2,4,8 \
        --output benchmarks/results/gguf/seq_sweep.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.prefix_cache import LOCAL_SCIFACT, build_workloads  # noqa: E402


def main() -> None:
    from prorank_edge.benchmarks.harness import machine_info
    from prorank_edge.reranker import Reranker

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", nargs="+", required=True)
    parser.add_argument("--n-seq-max", default="1,2,4,8")
    parser.add_argument("--data", type=Path, default=LOCAL_SCIFACT)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.n_seq_max.split(",")]
    queries = build_workloads(args.data, args.queries, [args.top_k], 0, passages=False)[0]["queries"]
    docs = sum(len(q["documents"]) for q in queries)
    rows = []
    for path in args.gguf:
        rerankers = {n: Reranker(path, backend="gguf", device="cpu", threads=args.threads, n_seq_max=n)
                     for n in sizes}
        for reranker in rerankers.values():  # warm-up, not timed
            reranker.rank(queries[0]["text"], queries[0]["documents"][:4])
        times = {n: [] for n in sizes}
        scores = {}
        for rep in range(args.repeats):
            for n in (sizes if rep % 2 == 0 else sizes[::-1]):
                t0 = time.perf_counter()
                results = [rerankers[n].rank(q["text"], q["documents"]) for q in queries]
                times[n].append(time.perf_counter() - t0)
                scores[n] = np.asarray([r["score"] for res in results
                                        for r in sorted(res, key=lambda r: r["corpus_id"])])
        base = sizes[-1]
        for n in sizes:
            row = {"file": Path(path).name, "n_seq_max": n, "docs_per_s": docs / min(times[n]),
                   "times_s": times[n], "reference_n_seq_max": base,
                   "max_abs_diff": float(np.abs(scores[n] - scores[base]).max()), "n_ctx": rerankers[n].backend.n_ctx}
            rows.append(row)
            print(f"{row['file']}: n_seq_max {n:>2}  {row['docs_per_s']:.2f} docs/s  "
                  f"max |diff| vs {base}: {row['max_abs_diff']:.2g}", flush=True)
        for reranker in rerankers.values():
            reranker.close()
    report = {"machine": {**machine_info(), "threads": args.threads},
              "workload": {"queries": args.queries, "top_k": args.top_k, "documents": docs, "repeats": args.repeats},
              "rows": rows}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
