#!/usr/bin/env python
"""nDCG@10 against latency per prompt length: the table the built-in model's `max_length` is chosen from.

For each `--lengths` value the model reranks the training run's held-out dev queries (BM25 top `--top-k`; the
queries both training stages held out, never test) and the time of one `rerank` call on `--latency-docs` BM25
candidates is taken as the best of `--repeats` calls on each of `--latency-queries` SciFact test queries (the
README's latency is one user's call; only the time is read from test, not the judgments).

    python benchmarks/length_sweep.py --model default --output benchmarks/results/training/length_sweep.json

Run it alone on the machine: a neighbour on the same cores is what it would measure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LOCAL_SCIFACT = REPO.parent / "shared" / "data" / "beir" / "scifact"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default=str(LOCAL_SCIFACT))
    parser.add_argument("--lengths", default="160,256,384,512")
    parser.add_argument("--dev-split", default="train", help="the split the training run held its dev queries out of")
    parser.add_argument("--dev-queries", type=int, default=100, help="queries the training run held out")
    parser.add_argument("--eval-queries", type=int, default=30, help="of them, how many are reranked")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--latency-queries", type=int, default=5)
    parser.add_argument("--latency-docs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    from prorank_edge import Reranker
    from prorank_edge.benchmarks.harness import machine_info, parse_int_list
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.evaluation.bm25 import BM25Retriever
    from prorank_edge.evaluation.evaluate import evaluate_reranker
    from prorank_edge.train.adapter_cmd import held_out_dev

    dev = held_out_dev(load_beir(args.data, args.dev_split), args.dev_queries, args.seed)
    test = load_beir(args.data, "test")
    qids = list(test.queries)[: args.latency_queries]
    hits, _ = BM25Retriever(test.corpus).retrieve([test.queries[q] for q in qids], args.latency_docs)
    calls = [(test.queries[q], [test.corpus[d].full_text for d in docs]) for q, docs in zip(qids, hits)]

    rows = []
    for length in parse_int_list(args.lengths):
        with Reranker(args.model, max_length=length) as reranker:
            report = evaluate_reranker(dev, reranker, top_k=args.top_k, max_queries=args.eval_queries,
                                       show_progress=False)
            best = []
            for query, docs in calls:
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    reranker.rank(query, docs)
                    times.append(time.perf_counter() - start)
                best.append(min(times))
            backend = reranker.describe()
        rows.append({"max_length": length, "dev_ndcg@10": report.metrics["reranker"]["ndcg@10"],
                     "bm25_dev_ndcg@10": report.metrics["bm25"]["ndcg@10"],
                     "rerank_s_median": sorted(best)[len(best) // 2], "rerank_s_each_query": best,
                     "backend": {k: backend.get(k) for k in ("backend", "dtype", "device", "threads")}})
        print(json.dumps(rows[-1]), flush=True)
    out = {"model": args.model, "dev_queries": report.queries, "top_k": args.top_k,
           "latency": f"one rerank call on {args.latency_docs} BM25 candidates, best of {args.repeats}, median "
                      f"over {len(calls)} test queries", "machine": machine_info(), "rows": rows}
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"| max_length | dev nDCG@10 | rerank of {args.latency_docs}, s |\n|---:|---:|---:|")
    for row in rows:
        print(f"| {row['max_length']} | {row['dev_ndcg@10']:.4f} | {row['rerank_s_median']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
