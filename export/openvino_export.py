"""Export an ONNX scoring artifact to OpenVINO IR with 8-bit weights and activations (`export --format openvino`).

The onnx fp32 artifact's three graphs (model.onnx, prefix.onnx, suffix.onnx) are each converted to OpenVINO IR
and quantized by NNCF (static int8: per-channel weights, per-tensor activations calibrated on built-in texts),
so OpenVINO's CPU plugin runs their projections on integer dot-product kernels (VNNI / AMX-INT8 / ARM dotprod).
What stays float, by measurement on the built-in model (round 5, 256-token prompts, 10 held-out SciFact dev
queries x BM25 top 20, per-query Spearman against OpenVINO f32; benchmarks/results/openvino_int8_probe/):

- attention's two activation-by-activation MatMuls, and the MLP's down projection, whose input carries the
  outlier channels no per-tensor 8-bit scale holds: every MatMul int8 0.905, attention kept float 0.914, both
  0.988 (float parts in bf16 where the CPU has it);
- the folded score head (a Mul + ReduceSum, not a MatMul, so no quantizer touches it).

The rest (q, k, v, o, gate, up) is smoothed first (SmoothQuant, Xiao et al. 2023): input channel j divided by
s_j and the weight's row j multiplied by it, with s calibrated once on model.onnx and written identically into
all three graphs (NNCF's own smoothing would calibrate each graph on its own inputs: without smoothing 0.944),
and the prefix and suffix graphs take model.xml's activation ranges, so the three compute one function (prefix +
suffix = whole prompt, checked at export). The smoothed weights are rounded by GPTQ (export/gptq.py) onto the
grid NNCF then keeps: per-query Spearman 0.9847 -> 0.9877 on 20 held-out dev queries, at no cost at run time.
Identical smoothed weights quantize to identical int8 bytes, so the three IR files share one weights file:

    model.xml, prefix.xml, suffix.xml    the three graphs (same inputs and outputs as the onnx artifact)
    model.bin                             every graph's constants, each stored once
    tokenizer.json, prorank_contract.json, export_info.json

Needs the export extra plus `openvino` and `nncf` (the openvino-export extra); the artifact runs with
`prorank-edge[openvino]` alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from .. import __version__
from ..contract import PromptBuilder, left_pad, shared_prefix_length
from ..errors import MissingExtraError, ProrankError
from ..formats import (
    CONTRACT_FILENAME,
    ONNX_EXPORT_INFO_FILENAME,
    ONNX_INPUT_NAMES,
    ONNX_MODEL_FILENAME,
    ONNX_PREFIX_INPUT_NAME,
    ONNX_PREFIX_MODEL_FILENAME,
    ONNX_PREFIX_OUTPUT_NAMES,
    ONNX_SUFFIX_MODEL_FILENAME,
    OPENVINO_GRAPH_FILENAMES,
    OPENVINO_WEIGHTS_FILENAME,
    QUANTS,
    TOKENIZER_FILENAME,
)

#: SmoothQuant migration strength for the int8 matmuls (NNCF's default for MatMul; measured below in the README
#: of benchmarks/results/openvino_int8_probe/)
OPENVINO_SMOOTHING_ALPHA = 0.95
#: largest |prefix + suffix score - model.xml score| on the check prompts: the three graphs compute one function
#: (same weights, same activation ranges), but a value summed in another order can round to the next int8 step
_REUSE_TOLERANCE = 5e-2
#: Const data alignment inside the shared weights file (OpenVINO maps the file; aligned data copies faster)
_ALIGNMENT = 64


def export_openvino(source: str | Path, output_dir: str | Path, quant: str = "int8", overwrite: bool = False,
                    calibration_pairs: Sequence[tuple[str, str]] | None = None,
                    alpha: float = OPENVINO_SMOOTHING_ALPHA) -> dict:
    """An OpenVINO int8 artifact folder from a transformers checkpoint or an onnx fp32 artifact; returns its
    export_info. calibration_pairs: (query, document) pairs for the smoothing and activation ranges (default:
    parity.builtin_calibration_pairs; never the split you report)."""
    from .onnx_export import _refuse_existing, _staging_folder, _version, export_onnx

    if quant not in QUANTS["openvino"]:
        raise ProrankError(f"unknown openvino level {quant!r}; choose one of: {', '.join(QUANTS['openvino'])}")
    _require_nncf()
    source, output_dir = Path(source), Path(output_dir)
    _refuse_existing(output_dir, overwrite)
    if not (source / ONNX_MODEL_FILENAME).is_file() and not (source / "config.json").is_file():
        raise ProrankError(f"{source}: neither a transformers checkpoint (config.json) nor an ONNX artifact "
                           f"({ONNX_MODEL_FILENAME})")
    started = time.perf_counter()
    # Intermediate files live inside the staging folder, so an export that is stopped leaves nothing behind.
    with _staging_folder(output_dir, overwrite) as staging:
        work = staging / ".work"
        work.mkdir()
        onnx_dir = source
        if not (source / ONNX_MODEL_FILENAME).is_file():
            onnx_dir = work / "onnx-fp32"
            export_onnx(source, onnx_dir, quant="fp32")
        source_info = _fp32_artifact_info(onnx_dir)
        for name in (TOKENIZER_FILENAME, CONTRACT_FILENAME):
            shutil.copyfile(onnx_dir / name, staging / name)
        info = _quantize_artifact(onnx_dir, staging, work, calibration_pairs, alpha)
        shutil.rmtree(work)
        kept = ("source_model", "architecture", "parameters", "max_length", "positive_token_id", "negative_token_id")
        info = {**{k: source_info[k] for k in kept if k in source_info}, "format": "openvino", "quant": quant,
                "source_artifact": str(onnx_dir.resolve()) if onnx_dir == source else None, **info,
                "export_seconds": round(time.perf_counter() - started, 1), "prorank_edge_version": __version__,
                "openvino_version": _version("openvino"), "nncf_version": _version("nncf")}
        info["files"] = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
        (staging / ONNX_EXPORT_INFO_FILENAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    info["path"] = str(output_dir)
    return info


def _require_nncf() -> None:
    import importlib.util

    for module in ("openvino", "nncf", "onnx", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError("export --format openvino", "openvino-export", module)


def _fp32_artifact_info(onnx_dir: Path) -> dict:
    info_path = onnx_dir / ONNX_EXPORT_INFO_FILENAME
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    if info.get("quant", "fp32") != "fp32":
        raise ProrankError(f"{onnx_dir}: export to openvino from an fp32 ONNX artifact, not a {info['quant']} one")
    if not all((onnx_dir / name).is_file() for name in (ONNX_PREFIX_MODEL_FILENAME, ONNX_SUFFIX_MODEL_FILENAME)):
        raise ProrankError(f"{onnx_dir}: has no {ONNX_PREFIX_MODEL_FILENAME}/{ONNX_SUFFIX_MODEL_FILENAME} (exported "
                           "before prefix reuse); export it again from the checkpoint")
    return info


# ---- quantization ---------------------------------------------------------------------------------------

def int8_matmuls(model) -> tuple[set[str], list[str]]:
    """(weight keys of the MatMuls to run in int8, names of every other MatMul): a constant-weight MatMul whose
    input width is the hidden size (q, k, v, o, gate, up) goes int8; down_proj (input width: the MLP's),
    attention's activation products and the rotary embedding's MatMul stay float."""
    from .onnx_int8 import _constant_matmuls, weight_key

    constant = _constant_matmuls(model)
    if not constant:
        raise ProrankError("the exported graph has no constant-weight MatMul to quantize")
    hidden = Counter(w.shape[0] for _, _, w in constant).most_common(1)[0][0]
    chosen = {id(node): weight_key(w) for _, node, w in constant if w.shape[0] == hidden}
    keep_float = [n.name for n in model.graph.node if n.op_type == "MatMul" and id(n) not in chosen]
    return set(chosen.values()), keep_float


def round_weights(model, factors: dict[str, dict], xtx: dict[str, np.ndarray]) -> list[float]:
    """Each smoothed weight s * W rounded by GPTQ onto the int8 grid NNCF will use, stored in its factors as
    "weight"; returns the output error against nearest rounding per weight. Nearest rounding left half of the
    int8 error in the weights: on 20 held-out SciFact dev queries (built-in model, against OpenVINO f32) the
    weights alone, rounded to nearest after smoothing, scored per-query Spearman 0.9906 (unsmoothed: 0.9947),
    and the whole int8 graph went from 0.9847 to 0.9877 with GPTQ."""
    from .gptq import gptq_round
    from .onnx_int8 import _constant_matmuls, weight_key

    ratios = []
    for _, _, weight in _constant_matmuls(model):
        key = weight_key(weight)
        if key in factors and "weight" not in factors[key]:
            scale = factors[key]["scale"]
            # the smoothed input is x / s, so its second moments are xtx / (s s^T)
            factors[key]["weight"], ratio = gptq_round(weight * scale[:, None], xtx[key] / np.outer(scale, scale))
            ratios.append(ratio)
    return ratios


def smooth(model, factors: dict[str, dict], keys: set[str]):
    """The model (changed in place) with the input of every MatMul whose weight key is in `keys` divided by
    its factor s (one Mul per activation tensor: q, k and v read the same one) and the weight's rows multiplied
    by s (or replaced by the factors' "weight", s * W already rounded): the same function, with activations an
    int8 step can hold."""
    from onnx import helper, numpy_helper

    from .onnx_int8 import _constant_matmuls, weight_key

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    smoothed_inputs: dict[str, str] = {}
    inserted: dict[int, list] = {}
    for index, node, weight in _constant_matmuls(model):
        key = weight_key(weight)
        if key not in keys:
            continue
        scale = factors[key]["scale"]
        rounded = factors[key].get("weight")
        x = node.input[0]
        if x not in smoothed_inputs:
            name = f"smooth/{len(smoothed_inputs)}"
            graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), name + "/inverse"))
            inserted.setdefault(index, []).append(helper.make_node("Mul", [x, name + "/inverse"], [name + "/x"],
                                                                   name=name + "/Mul"))
            smoothed_inputs[x] = name + "/x"
        node.input[0] = smoothed_inputs[x]
        smoothed = rounded if rounded is not None else (weight * scale[:, None]).astype(np.float32)
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(smoothed, node.input[1]))
    nodes = []
    for index, node in enumerate(graph.node):
        nodes += inserted.get(index, []) + [node]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def calibration_rows(prompts: PromptBuilder, pairs: Sequence[tuple[str, str]]) -> list[list[list[int]]]:
    """The calibration prompts' token ids, one group per query (a query's documents share its prompt prefix)."""
    by_query: dict[str, list[str]] = {}
    for query, document in pairs:
        by_query.setdefault(query, []).append(document)
    return [prompts.build(query, documents) for query, documents in by_query.items()]


def calibrated_factors(model, model_file: Path, rows: list[list[list[int]]], alpha: float):
    """(weight keys of the int8 MatMuls, their factors: smoothing scale and GPTQ-rounded smoothed weight, GPTQ's
    output error against nearest rounding per weight), from whole prompts through the fp32 model.onnx; the three
    graphs share them."""
    from .onnx_export import onnx_feeds
    from .onnx_int8 import calibrate, channel_factors

    keys, _ = int8_matmuls(model)
    stats = calibrate(model_file, onnx_feeds([r for group in rows for r in group]), covariance=True)
    stats = {k: v for k, v in stats.items() if k in keys}
    factors = channel_factors(stats, alpha=alpha, outlier_ratio=np.inf)
    error_ratios = round_weights(model, factors, {k: v["xtx"] for k, v in stats.items()})
    return keys, factors, error_ratios


def _quantize_artifact(onnx_dir: Path, staging: Path, work: Path, pairs, alpha: float) -> dict:
    """The three IR files and their shared weights file in `staging`; returns what export_info records."""
    import openvino as ov

    from ..backends.onnx_artifact import read_artifact, suffix_feed
    from .onnx_export import _load_borrowing_graph, _load_onnx, _save_onnx
    from .parity import builtin_calibration_pairs

    artifact = read_artifact(onnx_dir)
    prompts = PromptBuilder(artifact.tokenizer, artifact.contract)
    pairs = list(pairs or builtin_calibration_pairs())
    rows = calibration_rows(prompts, pairs)

    main = _load_onnx(artifact.model_file)
    keys, factors, error_ratios = calibrated_factors(main, artifact.model_file, rows, alpha)
    # One graph in memory at a time: a Qwen2.5-0.5B graph is 2 GB in fp32.
    keep_float, smoothed = {}, {}
    for name in (ONNX_MODEL_FILENAME, ONNX_PREFIX_MODEL_FILENAME, ONNX_SUFFIX_MODEL_FILENAME):
        if name != ONNX_MODEL_FILENAME:
            main = _load_borrowing_graph(onnx_dir / name) or _load_onnx(onnx_dir / name)
        keep_float[name] = int8_matmuls(main)[1]
        smoothed[name] = work / "smoothed" / name / name
        smoothed[name].parent.mkdir(parents=True)
        _save_onnx(smooth(main, factors, keys), smoothed[name])
        main = None
    core = ov.Core()
    # Calibration: whole prompts through model.onnx set the activation ranges of all three graphs (see
    # _set_activation_ranges); the reuse graphs need one valid input each, for NNCF to place the same quantizers:
    # a prefix, and a suffix on that prefix's keys/values from the smoothed fp32 prefix graph.
    items = {ONNX_MODEL_FILENAME: [dict(zip(ONNX_INPUT_NAMES, left_pad([row]))) for group in rows for row in group]}
    cut = shared_prefix_length(rows[0])
    prefix = {ONNX_PREFIX_INPUT_NAME: np.asarray([rows[0][0][:cut]], dtype=np.int64)}
    result = core.compile_model(str(smoothed[ONNX_PREFIX_MODEL_FILENAME]), "CPU",
                                {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request().infer(prefix)
    past = [np.array(result[name]) for name in ONNX_PREFIX_OUTPUT_NAMES]
    items[ONNX_PREFIX_MODEL_FILENAME] = [prefix]
    items[ONNX_SUFFIX_MODEL_FILENAME] = [suffix_feed(past, [rows[0][0][cut:]])]

    irs, quantized, ranges = work / "ir", {}, {}
    for name, path in smoothed.items():  # model.onnx first: its activation ranges are the others' too
        model, ignored = _quantize_graph(core.read_model(str(path)), items[name], keep_float[name])
        if name == ONNX_MODEL_FILENAME:
            ranges = activation_ranges(model)
        else:
            _set_activation_ranges(model, ranges, name)
        xml = irs / OPENVINO_GRAPH_FILENAMES[name]
        ov.save_model(model, str(xml), compress_to_fp16=True)
        quantized[name] = {"int8_weights": _count_int8_weights(xml), "float_matmuls": ignored}
    shared = _share_weights(irs, staging)
    _check_graphs(staging, prompts)
    return {"openvino": {"graphs": quantized, "weights_bytes_saved_by_sharing": shared,
                         "smoothing_alpha": alpha, "smoothed_matmuls": len(keys), "weight_rounding": "gptq",
                         "gptq_error_vs_nearest": round(float(np.mean(error_ratios)), 3),
                         "calibration_prompts": len(items[ONNX_MODEL_FILENAME]),
                         "calibration": f"{len(pairs)} pairs of {len(rows)} queries"
                         + (" (built-in, export/parity.py)" if pairs == builtin_calibration_pairs() else "")}}


def _quantize_graph(model, items: list[dict], keep_float: list[str]):
    """NNCF static int8 of one graph (its own smoothing already done); returns (model, MatMuls left float)."""
    import nncf
    from nncf.common.logging import nncf_logger
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    # SmoothQuant off: smoothing is already in the graph, the same for all three (see the module docstring). Bias
    # correction off: it would move each graph's biases (Qwen2's q, k, v) by what its own calibration saw.
    advanced = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1),
                                              disable_bias_correction=True)
    names = {op.get_friendly_name() for op in model.get_ops()}
    ignored = [n for n in keep_float if n in names]
    # NNCF logs each node it skips and draws progress bars on stdout, which belongs to `export --json`.
    level = nncf_logger.level
    nncf.set_log_level(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                                      preset=nncf.QuantizationPreset.MIXED, subset_size=len(items),
                                      ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                                      advanced_parameters=advanced)
    finally:
        nncf.set_log_level(level)
    return quantized, len(ignored)


def _activation_quantizers(model):
    """(FakeQuantize, names of the ops it feeds) of every activation quantizer (weights' have a constant input)."""
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            yield op, sorted(t.get_node().get_friendly_name() for t in op.output(0).get_target_inputs())


def activation_ranges(model) -> dict[str, list[np.ndarray]]:
    """Name of an op fed by an activation quantizer -> that quantizer's (input low, input high, output low, output
    high)."""
    ranges = {}
    for fq, consumers in _activation_quantizers(model):
        values = [np.array(fq.input_value(i).get_node().get_data()) for i in range(1, 5)]
        ranges.update(dict.fromkeys(consumers, values))
    return ranges


def _set_activation_ranges(model, ranges: dict[str, list[np.ndarray]], name: str) -> None:
    """Give a reuse graph's activation quantizers model.xml's ranges, by the ops they feed (the same names in all
    three traces). Ranges calibrated on suffix tokens alone leave out the first tokens' larger activations and
    clip what later documents bring: prefix + suffix scored 5x further from fp32 than the whole prompt on a
    random Qwen2 (0.028 against 0.0058, score spread 0.043); with one set of ranges the three graphs compute
    the same function."""
    from openvino import opset13

    for fq, consumers in _activation_quantizers(model):
        known = [ranges[c] for c in consumers if c in ranges]
        if not known:
            raise ProrankError(f"{name}: a quantizer before {consumers[0]} has no counterpart in "
                               f"{ONNX_MODEL_FILENAME}'s graph")
        # NNCF may share one quantizer among ops that model.xml quantizes apart: then no one range fits.
        if any(not all(np.array_equal(a, b) for a, b in zip(known[0], other)) for other in known[1:]):
            raise ProrankError(f"{name}: one quantizer feeds {', '.join(consumers)}, which "
                               f"{ONNX_MODEL_FILENAME}'s graph quantizes with different ranges")
        for i, value in enumerate(known[0], start=1):
            fq.input(i).replace_source_output(opset13.constant(value).output(0))


def _count_int8_weights(xml: Path) -> int:
    return sum(1 for layer in ElementTree.parse(xml).getroot().iter("layer")
               if layer.get("type") == "Const" and layer.find("data").get("element_type") == "i8")


# ---- one weights file for three graphs --------------------------------------------------------------------

def _share_weights(irs: Path, staging: Path) -> int:
    """Write the three graphs to `staging` with every Const read from one model.bin, each distinct constant
    stored once (model.xml's first, then what the others add); returns the bytes not stored twice."""
    index: dict[str, tuple[int, int]] = {}
    saved = 0
    with open(staging / OPENVINO_WEIGHTS_FILENAME, "wb") as weights:
        for name in (ONNX_MODEL_FILENAME, ONNX_PREFIX_MODEL_FILENAME, ONNX_SUFFIX_MODEL_FILENAME):
            xml = irs / OPENVINO_GRAPH_FILENAMES[name]
            tree = ElementTree.parse(xml)
            blob = xml.with_suffix(".bin").read_bytes()
            for layer in tree.getroot().iter("layer"):
                data = layer.find("data") if layer.get("type") == "Const" else None
                if data is None or data.get("offset") is None:
                    continue
                offset, size = int(data.get("offset")), int(data.get("size"))
                content = blob[offset:offset + size]
                key = hashlib.sha256(content).hexdigest() + f":{size}"
                if key in index:
                    saved += size
                else:
                    weights.write(b"\0" * (-weights.tell() % _ALIGNMENT))
                    index[key] = (weights.tell(), size)
                    weights.write(content)
                data.set("offset", str(index[key][0]))
            tree.write(staging / xml.name, encoding="utf-8", xml_declaration=True)
    return saved


# ---- checks ---------------------------------------------------------------------------------------------

def _check_graphs(staging: Path, prompts: PromptBuilder) -> None:
    """The finished folder loads in the openvino backend (three graphs, one shared weights file), and prefix +
    suffix score as model.xml does."""
    from ..backends.openvino_backend import OpenVinoBackend

    ids = prompts.build("Which protein binds ATP?", ["Kinases transfer phosphate groups from ATP to substrates.",
                                                    "The river floods every spring.", "ATP " * 20])
    cut = shared_prefix_length(ids)
    backend = OpenVinoBackend(staging, dtype="float32")
    try:
        if not backend.reuses_prefix:  # else score_with_prefix would score whole prompts and prove nothing
            raise ProrankError(f"{staging}: the prefix and suffix graphs were not written")
        whole = backend.score_batch(ids)
        reused = backend.score_with_prefix(ids[0][:cut], [r[cut:] for r in ids])
    finally:
        backend.close()
    if not (np.isfinite(whole).all() and np.isfinite(reused).all()):
        raise ProrankError(f"the quantized graphs score non-finite values (whole {whole}, prefix + suffix {reused})")
    if float(np.abs(whole - reused).max()) > _REUSE_TOLERANCE:
        raise ProrankError(f"{OPENVINO_GRAPH_FILENAMES[ONNX_SUFFIX_MODEL_FILENAME]}: the reuse graphs score "
                           f"{reused}, {OPENVINO_GRAPH_FILENAMES[ONNX_MODEL_FILENAME]} scores {whole}")
