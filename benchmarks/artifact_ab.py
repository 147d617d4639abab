"""Two artifacts (or checkpoints) of one model, A against B, on the toolkit's own path: docs/s and agreement.

For a change to an exporter: the artifact before and after, same Reranker options, SciFact test queries x
BM25 top k, passes interleaved (A B, B A, ...) so drift hits both alike; best of --repeats and the median of
the paired B/A time ratios, and the per-query Spearman of B's scores against A's.

    .venv/bin/python benchmarks/artifact_ab.py --a OLD_DIR --b NEW_DIR --output benchmarks/results/ab.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.prefix_cache import LOCAL_SCIFACT, build_workloads  # noqa: E402


def main() -> None:
    from prorank_edge.benchmarks.harness import machine_info
    from prorank_edge.export.parity import spearman
    from prorank_edge.reranker import Reranker

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True)
    parser.add_argument("--b", required=True)
    parser.add_argument("--data", type=Path, default=LOCAL_SCIFACT)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    queries = build_workloads(args.data, args.queries, [args.top_k], 0, passages=False)[0]["queries"]
    docs = sum(len(q["documents"]) for q in queries)
    rerankers = {side: Reranker(path, device="cpu", threads=args.threads) for side, path in (("a", args.a),
                                                                                            ("b", args.b))}
    for reranker in rerankers.values():  # warm-up, not timed
        reranker.rank(queries[0]["text"], queries[0]["documents"][:4])
    times, scores = {"a": [], "b": []}, {}
    for rep in range(args.repeats):
        for side in (("a", "b") if rep % 2 == 0 else ("b", "a")):
            t0 = time.perf_counter()
            results = [rerankers[side].rank(q["text"], q["documents"]) for q in queries]
            times[side].append(time.perf_counter() - t0)
            scores[side] = [np.asarray([r["score"] for r in sorted(res, key=lambda r: r["corpus_id"])])
                            for res in results]
    report = {
        "machine": {**machine_info(), "threads": args.threads},
        "a": args.a, "b": args.b, "queries": args.queries, "top_k": args.top_k, "documents": docs,
        "docs_per_s": {side: docs / min(t) for side, t in times.items()}, "times_s": times,
        "speedup_b_over_a_best": min(times["a"]) / min(times["b"]),
        "speedup_b_over_a_paired_median": float(np.median([a / b for a, b in zip(times["a"], times["b"])])),
        "spearman_b_vs_a_per_query": float(np.mean([spearman(a, b) for a, b in zip(scores["a"], scores["b"])])),
        "max_abs_score_diff": float(max(np.abs(a - b).max() for a, b in zip(scores["a"], scores["b"]))),
    }
    print(json.dumps({k: v for k, v in report.items() if k != "times_s"}, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
