"""Issue 19, round 15: make round 13's retrained checkpoint, coded as a rank-16 SVD plus a 1-bit rest (round 14),
the built-in default, exactly as measured (no new coding: the fitted row scales of the measured adapter are kept).

Its adapter was written by `train adapter --one-bit --svd-rank 16` with a 1-query dev measurement (a flat fusion
grid, whose tie rule stored weight 0.0; `train adapter` no longer stores a weight from a flat grid). The dev
figures stored here are the 100-query measurements of the same protocol (held-out train queries, seed 0, BM25
top 20, torch fp32): the adapter's from round14/soup_dev.json (soup_probe.py scored its merge, whose adapter
file is this one byte for byte), the checkpoint's from round13/adapter_retrain.json; the fusion weight is that
dev grid's best, 0.6.

    .venv/bin/python benchmarks/results/training/round15/ship_default.py /work/r14/r13_svd16_1bit
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from prorank_edge.contract import ScoringContract
from prorank_edge.formats import ADAPTER_INFO_FILENAME, ADAPTER_WEIGHTS_FILENAME
from prorank_edge.models import DEFAULT_ADAPTER_DIR

RESULTS = Path(__file__).resolve().parent.parent


def main(source: str) -> None:
    source = Path(source)
    info = json.loads((source / ADAPTER_INFO_FILENAME).read_text())
    measured = json.loads((RESULTS / "round14" / "soup_dev.json").read_text())
    adapter = measured["models"]["r13_svd16_1bit"]
    merged = Path(adapter["path"]) / "adapter" / ADAPTER_WEIGHTS_FILENAME
    if merged.read_bytes() != (source / ADAPTER_WEIGHTS_FILENAME).read_bytes():
        raise SystemExit(f"{source} is not the adapter soup_dev.json measured ({merged})")
    trained = json.loads((RESULTS / "round13" / "adapter_retrain.json").read_text())["dev"]["ndcg@10"]["trained"]
    grid = adapter["ndcg@10_by_weight"]
    weight = max(sorted(grid, key=float), key=lambda w: grid[w])
    info["start_adapter"] = "round 13 retrained, rank-16 SVD (train adapter --one-bit --svd-rank 16)"
    info["dev"] = {
        "queries": measured["dev"]["queries"], "top_k": measured["dev"]["top_k"], "split": measured["dev"]["split"],
        "ndcg@10": {"bm25": adapter["bm25_ndcg@10"], "trained": trained, "adapter": adapter["ndcg@10"],
                    "adapter_fused": adapter["fused_ndcg@10"]},
        "fusion_weight": float(weight), "ndcg@10_by_weight": grid,
        "measured_by": "benchmarks/results/training/round14/soup_probe.py (adapter), "
                       "round13/adapter_retrain.json (checkpoint); torch fp32, AVX2 EPYC, 2026-12-07",
    }
    info["generalization"] = json.loads((RESULTS / "round15" / "cranfield_summary.json").read_text())
    contract = ScoringContract.load(source)
    DEFAULT_ADAPTER_DIR.mkdir(exist_ok=True)
    shutil.copyfile(source / ADAPTER_WEIGHTS_FILENAME, DEFAULT_ADAPTER_DIR / ADAPTER_WEIGHTS_FILENAME)
    contract.replace(extra={**contract.extra, "fusion_weight": float(weight)}).save(DEFAULT_ADAPTER_DIR)
    (DEFAULT_ADAPTER_DIR / ADAPTER_INFO_FILENAME).write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "relative_error"}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
