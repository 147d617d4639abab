"""Exported artifacts of one model against its torch fp32 checkpoint: how well each keeps the ranking.

The first N SciFact test queries x BM25 top k; for each artifact the per-query Spearman of its scores against
torch fp32 on the same candidates (mean and lowest query), the largest score drift, and nDCG@10 beside fp32's
(the difference paired per query, with its 95% bootstrap interval).
Issues 14 and 15 ask quantized levels for Spearman >= 0.97-0.99 and |delta nDCG@10| <= 0.01-0.02.

    .venv/bin/python benchmarks/artifact_accuracy.py ARTIFACT [ARTIFACT ...] --queries 50 --output acc.json

ARTIFACT: an ONNX folder or a .gguf file exported from --model (default: the built-in reranker).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.prefix_cache import LOCAL_SCIFACT  # noqa: E402


def _evaluate(beir, path: str, queries: int, top_k: int, **options):
    from prorank_edge.evaluation.evaluate import evaluate_reranker
    from prorank_edge.reranker import Reranker

    with Reranker(path, device="cpu", **options) as reranker:
        report = evaluate_reranker(beir, reranker, top_k=top_k, max_queries=queries, show_progress=False)
        return report, reranker.describe()


def compare(reference, report) -> dict:
    """Per-query agreement of `report`'s scores with `reference`'s on the same candidates."""
    from prorank_edge.evaluation.significance import paired_comparison
    from prorank_edge.export.parity import spearman

    rhos, drift = [], 0.0
    for qid, candidates in reference.candidates.items():
        theirs = {c.doc_id: c.rerank_score for c in report.candidates[qid]}
        expected = np.array([c.rerank_score for c in candidates])
        got = np.array([theirs[c.doc_id] for c in candidates])
        drift = max(drift, float(np.abs(got - expected).max()))
        if len(candidates) > 1:
            rhos.append(spearman(expected, got))
    ndcg = report.to_dict()["metrics"]["reranker"]["ndcg@10"]
    return {"per_query_spearman": float(np.mean(rhos)), "min_query_spearman": float(np.min(rhos)),
            "max_abs_score_diff": drift, "ndcg@10": ndcg,
            "delta_ndcg@10": ndcg - reference.to_dict()["metrics"]["reranker"]["ndcg@10"],
            # the delta's 95% interval over these queries: a target such as |delta| <= 0.005 is only measurable
            # where the interval is narrower than it
            "delta_ndcg@10_paired": paired_comparison(report.per_query["reranker"]["ndcg@10"],
                                                      reference.per_query["reranker"]["ndcg@10"]),
            "pairs_per_s": report.timing["pairs_per_s"]}


def main(argv: list[str] | None = None) -> int:
    from prorank_edge.benchmarks.harness import machine_info
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.models import default_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--model", help="the torch checkpoint the artifacts were exported from (default: built-in)")
    parser.add_argument("--data", type=Path, default=LOCAL_SCIFACT)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    beir = load_beir(args.data, "test")
    model = args.model or str(default_model().path)
    reference, _ = _evaluate(beir, model, args.queries, args.top_k, backend="torch", dtype="float32")
    metrics = reference.to_dict()["metrics"]
    out = {"machine": machine_info(), "model": model, "queries": args.queries, "top_k": args.top_k,
           "torch_fp32": metrics["reranker"], "bm25": metrics["bm25"], "artifacts": {}}
    for artifact in args.artifacts:
        report, described = _evaluate(beir, artifact, args.queries, args.top_k)
        out["artifacts"][artifact] = {**compare(reference, report), "backend": described}
        print(json.dumps({artifact: {k: v for k, v in out["artifacts"][artifact].items() if k != "backend"}}),
              file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
