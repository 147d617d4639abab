"""Probe: int4 (base + adapter) with MatMulNBits accuracy_level 4 (int8 activations per block of 32, VNNI) against
the same artifact at the default level; whole prompts, 8 SciFact test queries x BM25 top 20, best of 2.

    .venv/bin/python benchmarks/results/onnx_int4/accuracy_level4_probe.py INT4_ARTIFACT

Ice Lake Xeon, 2 cores (2026-12-05): 2.03 -> 2.15 pairs/s (1.06x), per-query Spearman 1.0000 between the two.
"""
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from scipy.stats import spearmanr

from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import evaluate_reranker
from prorank_edge.reranker import Reranker

source, probe = Path(sys.argv[1]), Path("int4_accuracy_level4_probe")
shutil.rmtree(probe, ignore_errors=True)
shutil.copytree(source, probe)
for name in ("prefix.onnx", "suffix.onnx"):  # they point into model.onnx's bytes, which change below
    (probe / name).unlink()
model = onnx.load(str(probe / "model.onnx"), load_external_data=False)
for node in model.graph.node:
    if node.op_type == "MatMulNBits":
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend(kept + [onnx.helper.make_attribute("accuracy_level", 4)])
(probe / "model.onnx").write_bytes(model.SerializeToString())

beir = load_beir("../shared/data/beir/scifact", "test")
results = {}
for name, path in (("default level", source), ("accuracy_level 4", probe)):
    with Reranker(str(path), prefix_cache=False) as reranker:
        evaluate_reranker(beir, reranker, top_k=20, max_queries=2, show_progress=False)  # warm-up
        runs = [evaluate_reranker(beir, reranker, top_k=20, max_queries=8, show_progress=False) for _ in range(2)]
    scores = {q: [c.rerank_score for c in cands] for q, cands in runs[-1].candidates.items()}
    results[name] = (max(r.timing["pairs_per_s"] for r in runs), scores)
    print(name, "pairs/s", round(results[name][0], 2), flush=True)
(base_speed, base), (speed, scores) = results.values()
rho = np.mean([spearmanr(base[q], scores[q]).statistic for q in base])
print(f"per-query Spearman {rho:.4f}, speed {speed / base_speed:.2f}x")
