"""Fusion rules compared on saved per-candidate scores (score.py; run: python compare.py FOLDER): the weight of each rule is tuned on SciFact
dev only, then read on SciFact test and Cranfield."""
import json, sys
import numpy as np
from prorank_edge.evaluation.metrics import evaluate_run

def load(name):
    return json.load(open(f"{sys.argv[1]}/{name}.json"))

def ranks_desc(v):
    order = np.argsort(-v, kind="stable"); r = np.empty(len(v)); r[order] = np.arange(1, len(v) + 1); return r

def norm(rule, v):
    v = np.asarray(v, float)
    if rule == "minmax":
        span = np.ptp(v); return np.full(len(v), 0.5) if span == 0 else (v - v.min()) / span
    if rule == "zscore":
        sd = v.std(); return np.zeros(len(v)) if sd == 0 else (v - v.mean()) / sd
    if rule == "rrf":
        return 1.0 / (60 + ranks_desc(v))
    if rule == "rank":
        return 1.0 - (ranks_desc(v) - 1) / max(1, len(v) - 1)
    raise ValueError(rule)

def ndcg(d, rule, w):
    run = {}
    for q, cands in d["candidates"].items():
        b = np.array([c[1] for c in cands]); r = np.array([c[2] for c in cands])
        f = w * norm(rule, r) + (1 - w) * norm(rule, b)
        run[q] = {c[0]: float(x) for c, x in zip(cands, f)}
    return evaluate_run(d["qrels"], run, (10,))["mean"]["ndcg@10"]

sets = {n: load(n) for n in ("scifact_dev", "scifact_test", "cranfield") if __import__("os").path.exists(f"{sys.argv[1]}/{n}.json")}
grid = [round(x / 10, 1) for x in range(11)]
out = {}
for rule in ("minmax", "zscore", "rrf", "rank"):
    curves = {n: [ndcg(d, rule, w) for w in grid] for n, d in sets.items()}
    best = grid[int(np.argmax(curves["scifact_dev"]))]
    out[rule] = {"dev_weight": best, "at_dev_weight": {n: c[grid.index(best)] for n, c in curves.items()},
                 "curves": curves}
    print(rule, "w", best, {n: round(c[grid.index(best)], 4) for n, c in curves.items()})
for n, c in out["minmax"]["curves"].items():
    print(n, "bm25", round(c[0], 4), "alone", round(c[-1], 4))
json.dump({"grid": grid, "rules": out}, open(f"{sys.argv[1]}/compare.json", "w"), indent=1)
