"""`prorank-edge train adapter`: store a trained checkpoint as a small low-rank adapter over its base.

This is how the built-in default reranker (prorank_edge/default_adapter) is made from the CPU training run:
the adapter is written, merged back onto the base, and the merged model is measured on the training run's
held-out dev queries (never on test): how closely it scores like the full checkpoint, and which BM25 fusion
weight suits it. The weight goes into the adapter's contract, where `rerank` and `eval` find it.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from ..adapter import apply_adapter, make_adapter, make_sign_adapter
from ..contract import ScoringContract
from ..errors import ProrankError
from ..export.parity import spearman
from ..formats import ADAPTER_INFO_FILENAME
from .common import resolve_model_dir
from .data import split_beir_queries


def held_out_dev(data, dev_queries: int, seed: int):
    """The BEIR split restricted to the queries both training stages held out (the same seeded choice)."""
    _, dev_ids = split_beir_queries(data, dev_queries, seed)
    return dataclasses.replace(data, queries={q: data.queries[q] for q in dev_ids},
                               qrels={q: data.qrels[q] for q in dev_ids})


def _distill(base_dir: Path, adapter: Path, trained_dir: Path, beir: str, split: str, dev_queries: int, seed: int,
             steps: int) -> dict:
    """Fit the 1-bit adapter's row scales to the checkpoint on the training queries' groups (the dev ones held
    out by the same seeded choice as training): 1 positive + 7 of BM25's top 30, round 5's groups."""
    from .config import DataConfig
    from .data import listwise_groups, load_training_data
    from .sign_scales import distill_sign_scales

    data = load_training_data(DataConfig(beir=beir, split=split, dev_queries=dev_queries, hard_negatives=7,
                                         bm25_depth=30), seed)
    groups = [g for g in listwise_groups(data.groups, 1, 7, seed=seed) if len(g[1]) > 1]
    max_length = ScoringContract.load(trained_dir).max_length
    losses = distill_sign_scales(base_dir, adapter, trained_dir, groups, max_length, steps)
    tenth = max(1, steps // 10)
    return {"steps": steps, "queries": len(data.groups), "groups": len(groups),
            "loss_first_tenth": float(np.mean(losses[:tenth])),
            "loss_last_tenth": float(np.mean(losses[-tenth:]))}


def build_adapter(model: str, base: str, output: str | Path, rank: int, beir: str | None, split: str,
                  dev_queries: int, seed: int, top_k: int, max_queries: int,
                  start_adapter: str | Path | None = None, distill_steps: int = 0, one_bit: bool = False,
                  svd_rank: int = 0) -> dict:
    from ..evaluation.beir import load_beir
    from ..evaluation.evaluate import add_fusion, evaluate_reranker, tune_fusion_weight, weight_to_store
    from ..reranker import Reranker

    trained_dir, base_dir, output = resolve_model_dir(model), resolve_model_dir(base), Path(output)
    if one_bit or start_adapter is not None:
        info = make_sign_adapter(base_dir, trained_dir, output, start_adapter, base_name=base, svd_rank=svd_rank)
        if distill_steps:
            if not beir:
                raise ProrankError("fitting the 1-bit scales (--distill-steps) needs --data, the training run's "
                                   "BEIR folder: they are fitted on its training queries (never the dev ones)")
            info["distill"] = _distill(base_dir, output, trained_dir, beir, split, dev_queries, seed, distill_steps)
    else:
        info = make_adapter(base_dir, trained_dir, output, rank=rank, base_name=base)
    if beir:
        dev = held_out_dev(load_beir(beir, split), dev_queries, seed)
        with tempfile.TemporaryDirectory(prefix="prorank-adapter-") as merged:
            apply_adapter(base_dir, output, merged)
            reports = {}
            for name, path in (("trained", trained_dir), ("adapter", merged)):
                with Reranker(str(path), backend="torch", device="cpu") as reranker:
                    reports[name] = evaluate_reranker(dev, reranker, top_k=top_k, max_queries=max_queries)
        weight, grid = tune_fusion_weight(reports["adapter"])
        fused = add_fusion(reports["adapter"], weight)
        flat = {name: np.array([c.rerank_score for q in r.candidates for c in r.candidates[q]])
                for name, r in reports.items()}
        info["dev"] = {
            "queries": reports["adapter"].queries, "top_k": top_k, "split": split,
            "ndcg@10": {"bm25": reports["adapter"].metrics["bm25"]["ndcg@10"],
                        "trained": reports["trained"].metrics["reranker"]["ndcg@10"],
                        "adapter": reports["adapter"].metrics["reranker"]["ndcg@10"],
                        "adapter_fused": fused["ndcg@10"]},
            "spearman_adapter_vs_trained": spearman(flat["adapter"], flat["trained"]),
            "fusion_weight": weight, "ndcg@10_by_weight": {str(w): v for w, v in grid.items()},
        }
        stored, note = weight_to_store(weight, grid)
        if note:
            info["dev"]["fusion_note"] = note
        if stored is None:
            info["dev"]["fusion_weight"] = None
            info["dev"]["fusion_note"] += " (--max-queries, --dev-queries); no fusion weight stored"
        else:
            contract = ScoringContract.load(output)
            contract.replace(extra={**contract.extra, "fusion_weight": stored}).save(output)
    (output / ADAPTER_INFO_FILENAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
