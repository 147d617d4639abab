"""Where w8a8 loses the ranking: per-query Spearman against the fp32 graph when groups of matmuls stay fp32.

Scores SciFact *train* queries held out from training (the dev queries; never test) x BM25 top K with the
fp32 ONNX graph and with w8a8 graphs built in memory from it (export/onnx_int8.py), each variant leaving one
group of matmuls (a projection kind, a layer range) unquantized or changing the calibration. What a variant
recovers says where the error comes from; the choice it supports is then checked on test by the bench.

    .venv/bin/python benchmarks/w8a8_sensitivity.py FP32_ARTIFACT --queries 30 --top-k 10 \
        --variants baseline,keep:down_proj,keep:layers.0 > sensitivity.json

Variants: `baseline`; `keep:PATTERN[+PATTERN]` (matmuls whose node name contains a pattern stay fp32);
`twopass:PATTERN[+PATTERN]` (their inputs rounded twice, ~16-bit activations on the integer GEMM);
`ratio:R` (outlier ratio R); `alpha:A`; `calib:beir` (calibrated on 20 other dev queries' candidates instead of
the built-in pairs); `split:S` (each matmul cut along K into its share S of widest input channels and the
rest, each part with its own scales: split_channels); `weights:u8` (the same int8 weights stored as uint8 with
a zero point of 128: onnxruntime then takes its u8 x u8 GEMM, which on AVX2 without VNNI widens to 16 bits
instead of adding u8 x s8 products in saturating int16 pairs). Parts joined by `&` combine, e.g.
`twopass:/body&alpha:0`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from prorank_edge.benchmarks.harness import machine_info
from prorank_edge.contract import PromptBuilder, ScoringContract
from prorank_edge.export.onnx_export import onnx_feeds
from prorank_edge.export.onnx_int8 import (
    INT8_SMOOTHING_ALPHA,
    OUTLIER_RATIO,
    _constant_matmuls,
    calibrate,
    channel_factors,
    quantize_int8,
    weight_key,
)
from prorank_edge.export.parity import builtin_pairs, spearman


def load_prompts(artifact: Path) -> PromptBuilder:
    from tokenizers import Tokenizer

    contract = ScoringContract.load(artifact)
    return PromptBuilder(Tokenizer.from_file(str(artifact / "tokenizer.json")), contract)


def dev_groups(beir: str, queries: int, top_k: int, seed: int) -> list[list[tuple[str, str]]]:
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.evaluation.bm25 import BM25Retriever
    from prorank_edge.train.adapter_cmd import held_out_dev

    data = held_out_dev(load_beir(beir, "train"), 100, seed)
    qids = list(data.queries)[:queries]
    docs, _ = BM25Retriever(data.corpus).retrieve([data.queries[q] for q in qids], top_k)
    return [[(data.queries[q], data.corpus[d].full_text) for d in ds] for q, ds in zip(qids, docs)]


def feeds_of(prompts: PromptBuilder, pairs, batch: int = 10) -> list[dict]:
    return onnx_feeds(prompts.build_pairs(pairs), batch)


def score(model, feeds) -> tuple[np.ndarray, float]:
    """Scores of every feed's rows, and the seconds the runs took (the session's creation not counted)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    scores = np.concatenate([session.run(["score"], f)[0].reshape(-1) for f in feeds])
    return scores, time.perf_counter() - start


def unsigned_weights(model):
    """The w8a8 graph with every MatMulInteger's int8 weight stored as uint8 (+128) and given a zero point of 128:
    the same integers, on onnxruntime's u8 x u8 kernels."""
    from onnx import TensorProto, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    model.graph.initializer.append(numpy_helper.from_array(np.array(128, dtype=np.uint8), "int8/weight_zero_point"))
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or len(node.input) > 3:
            continue
        weight = initializers[node.input[1]]
        if weight.data_type == TensorProto.INT8:
            values = numpy_helper.to_array(weight).astype(np.int16) + 128
            weight.CopyFrom(numpy_helper.from_array(values.astype(np.uint8), weight.name))
        node.input.append("int8/weight_zero_point")
    return model


def split_channels(model, stats: dict, share: float):
    """The fp32 graph with each constant MatMul cut in two along K: its `share` of input channels with the
    largest calibrated max |x|, and the rest, each a Gather and a MatMul, the two products added. Quantized,
    each part gets its own per-token activation scale and its own per-column weight scale, so the wide channels
    no longer set the grid of the others (a two-group form of per-block scales, on MatMulInteger)."""
    from onnx import helper, numpy_helper

    found = {index: weight for index, _, weight in _constant_matmuls(model)}
    gathered: dict[tuple[str, str], str] = {}  # (input, part) -> its gathered channels
    nodes, initializers, replaced = [], [], set()
    for index, node in enumerate(model.graph.node):
        weight = found.get(index)
        if weight is None:
            nodes.append(node)
            continue
        x_max = stats[weight_key(weight)]["x_max"]
        wide = np.sort(np.argsort(-x_max)[:max(1, int(share * len(x_max)))])
        parts = []
        for part, channels in (("wide", wide), ("rest", np.setdiff1d(np.arange(len(x_max)), wide))):
            key = (node.input[0], part)
            if key not in gathered:  # q, k and v (gate and up) share their input, so its split too
                name = f"split/{len(gathered)}"
                initializers.append(numpy_helper.from_array(channels.astype(np.int64), name + "/channels"))
                nodes.append(helper.make_node("Gather", [node.input[0], name + "/channels"], [name + "/x"], axis=-1))
                gathered[key] = name + "/x"
            initializers.append(numpy_helper.from_array(weight[channels].astype(np.float32), f"{node.name}/{part}/w"))
            nodes.append(helper.make_node("MatMul", [gathered[key], f"{node.name}/{part}/w"],
                                          [f"{node.name}/{part}/y"], name=f"{node.name}/{part}"))
            parts.append(f"{node.name}/{part}/y")
        nodes.append(helper.make_node("Add", parts, [node.output[0]]))
        replaced.add(node.input[1])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [i for i in model.graph.initializer if i.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + initializers)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="fp32 ONNX artifact folder (model.onnx, tokenizer, contract)")
    parser.add_argument("--beir", default="../shared/data/beir/scifact")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the training seed that chose the dev queries")
    parser.add_argument("--variants", default="baseline")
    args = parser.parse_args()

    import onnx

    fp32_path = args.artifact / "model.onnx"
    fp32 = onnx.load(str(fp32_path))
    prompts = load_prompts(args.artifact)
    groups = dev_groups(args.beir, args.queries + 20, args.top_k, args.seed)
    # the 20 queries after the evaluated ones calibrate `calib:beir`
    calibration, groups = feeds_of(prompts, [p for g in groups[args.queries:] for p in g]), groups[:args.queries]
    pairs = [p for g in groups for p in g]
    feeds = feeds_of(prompts, pairs)
    sizes = [len(g) for g in groups]
    reference, fp32_s = score(fp32, feeds)

    names = {weight_key(w): node.name for _, node, w in _constant_matmuls(fp32)}
    builtin_feeds = feeds_of(prompts, builtin_pairs(), 8)  # what the export calibrates on
    stats = {"builtin": calibrate(fp32_path, builtin_feeds)}
    out = {"machine": machine_info(), "artifact": str(args.artifact), "queries": args.queries, "top_k": args.top_k,
           "split": "train (held-out dev queries)", "fp32_s": fp32_s, "variants": {}}
    for variant in args.variants.split(","):
        alpha, ratio, source, chosen, passes, share = INT8_SMOOTHING_ALPHA, OUTLIER_RATIO, "builtin", [], 1, 0.0
        unsigned = False
        for part in variant.split("&"):
            kind, _, value = part.partition(":")
            if kind in ("keep", "twopass"):
                chosen, passes = value.split("+"), 0 if kind == "keep" else 2
            elif kind == "ratio":
                ratio = float(value)
            elif kind == "alpha":
                alpha = float(value)
            elif kind == "split":
                share = float(value)
            elif kind == "weights" and value == "u8":
                unsigned = True
            elif kind == "calib":
                source = value
                if source not in stats:
                    stats[source] = calibrate(fp32_path, calibration)
            elif kind != "baseline":
                sys.exit(f"unknown variant {part!r}")
        source_model, source_stats, matmul_names = onnx.load(str(fp32_path)), stats[source], names
        if share:
            source_model = split_channels(source_model, source_stats, share)
            with tempfile.TemporaryDirectory() as folder:  # calibrate reads a file
                onnx.save(source_model, f"{folder}/split.onnx")
                source_stats = calibrate(Path(folder) / "split.onnx", builtin_feeds)
            matmul_names = {weight_key(w): node.name for _, node, w in _constant_matmuls(source_model)}
            split_fp32, _ = score(source_model, feeds[:3])  # the cut itself changes nothing but float rounding
            print(f"split graph vs fp32: max |diff| {np.abs(split_fp32 - reference[:len(split_fp32)]).max():.2e}",
                  file=sys.stderr)
        factors = channel_factors(source_stats, alpha=alpha, outlier_ratio=ratio)
        kept = {k for k, name in matmul_names.items() if any(p in name for p in chosen)}
        for key in kept:
            factors[key]["activation_passes"] = passes
        model = quantize_int8(source_model, factors)
        if unsigned:
            model = unsigned_weights(model)
        scores, elapsed = score(model, feeds)
        rhos, at = [], 0
        for n in sizes:
            rhos.append(spearman(reference[at:at + n], scores[at:at + n]))
            at += n
        diff = np.abs(scores - reference)
        out["variants"][variant] = {
            "changed_matmuls": len(kept), "per_query_spearman": float(np.mean(rhos)), "min_query_spearman":
            float(np.min(rhos)), "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
            "seconds": elapsed, "x_fp32_time": fp32_s / elapsed}
        print(variant, json.dumps(out["variants"][variant]), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
