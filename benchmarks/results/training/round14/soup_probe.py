"""Issue 19, round 14 probe: does a weight-space average ("model soup", Wortsman et al. 2022) of two stage-2 models
rank better on dev than either? Both are fine-tunes of SmolLM2-135M-Instruct with the same contract: round 5 (the
shipped default, merged) and round 13's retrained checkpoint (full fine-tune, dev top 20 0.7307 against round 5's
0.7209). No training: each soup is (1 - a) x round 5 + a x round 13, tensor by tensor.

Every model is scored on the 100 held-out dev queries (seed 0, the training runs' choice) x BM25 top 20, torch on
CPU (fp32 where the CPU has no native bf16), and every pair's score is kept in the JSON so that other combinations
can be computed from it without scoring again.

    .venv/bin/python benchmarks/results/training/round14/soup_probe.py OUT.json MODEL_OR_SOUP...
    # MODEL_OR_SOUP: NAME=PATH, or NAME=soup:A:PATH_A:PATH_B (written once under /work/r14/NAME)
    PROBE_SPLIT=test ... scores SciFact's 300 test queries instead (only for a model whose test figure is read
    anyway, as the shipped default's; fusion then at the model's own contract weight, not tuned there)
    PROBE_DATA=DIR ... scores the test split of another BEIR folder (e.g. Cranfield, never trained on), the same way
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from prorank_edge.devices import cpu_has_native_bf16
from prorank_edge.evaluation.beir import load_beir
from prorank_edge.evaluation.evaluate import add_fusion, evaluate_reranker, tune_fusion_weight
from prorank_edge.reranker import Reranker
from prorank_edge.train.adapter_cmd import held_out_dev

SCIFACT = "../shared/data/beir/scifact"
SOUPS = Path("/work/r14")


def make_soup(name: str, weight: float, path_a: str, path_b: str) -> Path:
    """(1 - weight) x A + weight x B for every tensor, A's tokenizer, config and contract."""
    from safetensors.torch import load_file, save_file

    out = SOUPS / name
    if (out / "model.safetensors").exists():
        return out
    a, b = load_file(f"{path_a}/model.safetensors"), load_file(f"{path_b}/model.safetensors")
    if a.keys() != b.keys():  # a training resume folder (accelerate) saves the wrapped model: "model.model.layers..."
        b = {k.removeprefix("model."): v for k, v in b.items()}
    if a.keys() != b.keys():
        raise SystemExit(f"{path_a} and {path_b} hold different tensors")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(path_a, tmp, ignore=shutil.ignore_patterns("model.safetensors", "resume", "adapter"))
    save_file({k: ((1 - weight) * a[k].float() + weight * b[k].float()).to(a[k].dtype).contiguous() for k in a},
              str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tmp.rename(out)
    return out


def main(out_json: str, specs: list[str]) -> None:
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    results = json.loads(Path(out_json).read_text()) if Path(out_json).exists() else {
        "cpu": {"processor": platform.processor(), "native_bf16": cpu_has_native_bf16(),
                "flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))},
        "dev": {"queries": 100, "seed": 0, "top_k": 20, "split": "train"}, "models": {}}
    other = os.environ.get("PROBE_DATA")
    test = other is not None or os.environ.get("PROBE_SPLIT") == "test"
    dev = load_beir(other or SCIFACT, "test") if test else held_out_dev(load_beir(SCIFACT, "train"), 100, 0)
    if test:
        results["dev"] = {"queries": len(dev.queries), "top_k": 20, "split": "test", "data": other or SCIFACT}
    for spec in specs:
        name, _, where = spec.partition("=")
        if name in results["models"]:
            continue
        if where.startswith("soup:"):
            _, weight, path_a, path_b = where.split(":")
            path, origin = make_soup(name, float(weight), path_a, path_b), {"soup": float(weight), "a": path_a,
                                                                             "b": path_b}
        else:
            path, origin = Path(where), {"path": where}
        start = time.perf_counter()
        with Reranker(str(path), backend="torch", device="cpu") as reranker:
            report = evaluate_reranker(dev, reranker, top_k=20, show_progress=True)
            dtype = reranker.describe().get("dtype")
            contract_weight = reranker.contract.extra.get("fusion_weight")
        weight, grid = (contract_weight, {}) if test else tune_fusion_weight(report)  # never tuned on test
        results["models"][name] = {
            **origin, "dtype": dtype, "seconds": round(time.perf_counter() - start, 1),
            "ndcg@10": report.metrics["reranker"]["ndcg@10"], "bm25_ndcg@10": report.metrics["bm25"]["ndcg@10"],
            "fused_ndcg@10": add_fusion(report, weight)["ndcg@10"], "fusion_weight": weight,
            **({"ndcg@10_by_weight": {str(w): v for w, v in grid.items()}} if grid else {}),
            "scores": {q: {c.doc_id: [round(c.bm25_score, 5), round(c.rerank_score, 5)] for c in cands}
                       for q, cands in report.candidates.items()},
        }
        Path(out_json).write_text(json.dumps(results, separators=(",", ":")) + "\n")  # 2,000 scores a model
        m = results["models"][name]
        print(f"{name}: alone {m['ndcg@10']:.4f}  fused {m['fused_ndcg@10']:.4f} (w {weight})  "
              f"bm25 {m['bm25_ndcg@10']:.4f}  {m['seconds']} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
