"""Paired comparison of the models that soup_probe.py scored: per dev query nDCG@10 alone and fused (each model at its
dev-tuned weight), the mean difference against a reference model and a 95% bootstrap interval over queries
(10,000 resamples, seed 0). This is the noise that "dev prefers it" has to clear on these 100 queries.
REFERENCE "bm25" compares with BM25's own ranking of the same candidates (alone and fused alike).

    .venv/bin/python benchmarks/results/training/round14/paired.py SCORES.json REFERENCE [OUT.json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.metrics import evaluate_run
from prorank_edge.fusion import fuse_scores
from prorank_edge.train.adapter_cmd import held_out_dev


def per_query(qrels, scores: dict, weight: float | None) -> dict[str, float]:
    run = {}
    for qid, cands in scores.items():
        docs = list(cands)
        bm25, model = np.array([cands[d][0] for d in docs]), np.array([cands[d][1] for d in docs])
        values = model if weight is None else fuse_scores(bm25, model, weight)
        run[qid] = {d: float(v) for d, v in zip(docs, values)}
    return evaluate_run(qrels, run, k_values=(10,), recall_k=(20,))["per_query"]["ndcg@10"]


def main(path: str, reference: str, out: str | None = None) -> None:
    scored = json.loads(Path(path).read_text())
    models = scored["models"]
    data = scored["dev"].get("data", "../shared/data/beir/scifact")  # older files: SciFact
    qrels = (load_beir(data, "test").qrels if scored["dev"]["split"] == "test"
             else held_out_dev(load_beir(data, "train"), 100, 0).qrels)
    table = {}
    for name, m in models.items():
        table[name] = {"alone": per_query(qrels, m["scores"], None),
                       "fused": per_query(qrels, m["scores"], m["fusion_weight"])}
    first = next(iter(models.values()))
    bm25_only = {q: {d: [v[0], v[0]] for d, v in c.items()} for q, c in first["scores"].items()}
    table["bm25"] = {"alone": per_query(qrels, bm25_only, None), "fused": per_query(qrels, bm25_only, None)}
    rng = np.random.default_rng(0)
    qids = sorted(qrels)
    picks = rng.integers(0, len(qids), size=(10_000, len(qids)))
    report = {"reference": reference, "queries": len(qids), "models": {}}
    for name in models:
        row = {}
        for system in ("alone", "fused"):
            diff = np.array([table[name][system][q] - table[reference][system][q] for q in qids])
            means = diff[picks].mean(axis=1)
            row[system] = {"ndcg@10": float(np.mean([table[name][system][q] for q in qids])),
                           "diff": float(diff.mean()), "ci95": [float(np.percentile(means, 2.5)),
                                                                float(np.percentile(means, 97.5))],
                           "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum())}
        report["models"][name] = row
        print(f"{name:16s} " + "  ".join(
            f"{s} {row[s]['ndcg@10']:.4f} ({row[s]['diff']:+.4f}, 95% [{row[s]['ci95'][0]:+.4f}, "
            f"{row[s]['ci95'][1]:+.4f}], {row[s]['wins']}/{row[s]['losses']})" for s in ("alone", "fused")))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
