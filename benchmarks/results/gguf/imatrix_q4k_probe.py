"""Probe (issue 15): q4_k_m with importance-weighted Q4_K rounding, against llama.cpp's own q4_k_m of the same file.

llama.cpp's quantizer takes an importance matrix only as a C++ object that ctypes cannot build, and
llama-cpp-python ships no llama-imatrix / llama-quantize, so this writes the Q4_K tensors itself in numpy:

1. the exporter's smoothed f16 GGUF of the model (alpha 0.5, as `export --quant q4_k_m`), and llama.cpp's q4_k_m
   of it (the baseline: its mix keeps some tensors at Q6_K);
2. importance per input channel: the mean of x^2 over the built-in calibration pairs (abstract-length texts,
   never SciFact test), divided by the smoothing's column factor squared (the smoothed file's inputs);
3. every Q4_K tensor of the baseline re-rounded from the f16 weights: per block of 32, the scale and min that
   minimise sum w (x - (a q - m))^2 over 37 trial scales (as llama.cpp's make_qkx3_quants), w = importance x
   sqrt(sigma^2 + x^2) (its weighting); the 6-bit sub-block scales and mins by nearest rounding; written in place
   (same type, same bytes). A control rounds the same way with w = 1 (no importance), to separate the rounding
   search from the importance.

    .venv/bin/python benchmarks/results/gguf/imatrix_q4k_probe.py OUT_DIR QUERIES TOP_K

Then scores each file against torch fp32 on the first QUERIES SciFact test queries x BM25 top TOP_K.
"""
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

QK, SUB = 256, 32


def q4k_quantize(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rows of x [rows, cols] (cols a multiple of 256) as Q4_K bytes [rows, cols / 256 * 144], weights w."""
    rows, cols = x.shape
    xb = x.reshape(-1, SUB).astype(np.float64)
    wb = np.broadcast_to(w, x.shape).reshape(-1, SUB).astype(np.float64)
    xmin = np.minimum(xb.min(1), 0.0)
    xmax = xb.max(1)
    span = np.maximum(xmax - xmin, 1e-30)
    best_a = span / 15
    best_m = xmin.copy()  # x ~ a q + m, m <= 0
    q = np.clip(np.rint((xb - xmin[:, None]) / best_a[:, None]), 0, 15)
    best_err = (wb * (best_a[:, None] * q + best_m[:, None] - xb) ** 2).sum(1)
    sw = wb.sum(1)
    sx = (wb * xb).sum(1)
    for k in range(37):
        iscale = (-0.9 + 0.05 * k + 15) / span
        q = np.clip(np.rint(iscale[:, None] * (xb - xmin[:, None])), 0, 15)
        sq, sqq, sqx = (wb * q).sum(1), (wb * q * q).sum(1), (wb * q * xb).sum(1)
        det = sw * sqq - sq * sq
        ok = det > 0
        a = np.where(ok, (sw * sqx - sq * sx) / np.where(ok, det, 1), 0.0)
        m = np.where(ok, (sqq * sx - sq * sqx) / np.where(ok, det, 1), 0.0)
        positive = m > 0  # a min above zero is not representable: fit the scale alone
        a = np.where(positive, sqx / np.maximum(sqq, 1e-30), a)
        m = np.where(positive, 0.0, m)
        err = (wb * (a[:, None] * q + m[:, None] - xb) ** 2).sum(1)
        better = ok & (a > 0) & (err < best_err)
        best_a, best_m, best_err = np.where(better, a, best_a), np.where(better, m, best_m), np.minimum(
            best_err, np.where(better, err, np.inf))
    scales = best_a.reshape(-1, 8)
    mins = (-best_m).reshape(-1, 8)
    d = (scales.max(1) / 63).astype(np.float16)
    dmin = (mins.max(1) / 63).astype(np.float16)
    d32, dmin32 = d.astype(np.float64), dmin.astype(np.float64)
    ls = np.clip(np.rint(scales / np.where(d32 > 0, d32, 1)[:, None]), 0, 63).astype(np.uint8)
    lm = np.clip(np.rint(mins / np.where(dmin32 > 0, dmin32, 1)[:, None]), 0, 63).astype(np.uint8)
    sc = (d32[:, None] * ls).reshape(-1)
    mm = (dmin32[:, None] * lm).reshape(-1)
    q = np.clip(np.rint((xb + mm[:, None]) / np.where(sc > 0, sc, 1)[:, None]), 0, 15).astype(np.uint8)
    q = np.where(sc[:, None] > 0, q, 0).astype(np.uint8)
    nblocks = len(d)
    packed = np.zeros((nblocks, 144), np.uint8)
    packed[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    packed[:, 2:4] = dmin.view(np.uint8).reshape(-1, 2)
    s = np.zeros((nblocks, 12), np.uint8)
    s[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    s[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    packed[:, 4:16] = s
    qb = q.reshape(nblocks, 4, 2, 32)  # 4 chunks of 64: low nibbles the first 32, high the next 32
    packed[:, 16:] = (qb[:, :, 0, :] | (qb[:, :, 1, :] << 4)).reshape(nblocks, 128)
    return packed.reshape(rows, cols // QK * 144)


def q5_0_quantize(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rows of x as Q5_0 bytes (blocks of 32: x ~ d (q - 16)), d chosen by a weighted search over 19 trial scales
    around llama.cpp's reference d = max / -16 (max the signed value of largest magnitude)."""
    rows, cols = x.shape
    xb = x.reshape(-1, SUB).astype(np.float64)
    wb = np.broadcast_to(w, x.shape).reshape(-1, SUB).astype(np.float64)
    biggest = xb[np.arange(len(xb)), np.abs(xb).argmax(1)]
    safe = np.where(biggest != 0, biggest, 1.0)
    best_d = biggest / -16
    best_err = np.full(len(xb), np.inf)
    for k in range(-9, 10):
        iscale = -(16 + 0.1 * k) / safe
        q = np.clip(np.rint(iscale[:, None] * xb), -16, 15)
        sqq, sqx = (wb * q * q).sum(1), (wb * q * xb).sum(1)
        d = np.where(sqq > 0, sqx / np.maximum(sqq, 1e-30), 0.0)
        err = (wb * (d[:, None] * q - xb) ** 2).sum(1)
        better = err < best_err
        best_d, best_err = np.where(better, d, best_d), np.where(better, err, best_err)
    d16 = best_d.astype(np.float16)
    d = d16.astype(np.float64)
    q = (np.clip(np.rint(xb / np.where(d != 0, d, 1)[:, None]), -16, 15) + 16).astype(np.uint32)
    q = np.where(d[:, None] != 0, q, 16).astype(np.uint32)
    packed = np.zeros((len(xb), 22), np.uint8)
    packed[:, 0:2] = d16.view(np.uint8).reshape(-1, 2)
    high = ((q[:, :16] >> 4) & 1) << np.arange(16, dtype=np.uint32) | ((q[:, 16:] >> 4) & 1) << np.arange(
        16, 32, dtype=np.uint32)
    packed[:, 2:6] = high.sum(1, dtype=np.uint32).astype("<u4").view(np.uint8).reshape(-1, 4)
    packed[:, 6:] = ((q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)).astype(np.uint8)
    return packed.reshape(rows, cols // SUB * 22)


QUANTIZERS = {}


def main() -> None:
    import gguf
    import torch
    from tokenizers import Tokenizer

    from prorank_edge.backends.torch_backend import TorchBackend
    from prorank_edge.contract import PromptBuilder, ScoringContract
    from prorank_edge.export.gguf_export import _architecture, _quantize, _write_unquantized
    from prorank_edge.export.parity import builtin_calibration_pairs, builtin_pairs
    from prorank_edge.export.smoothing import DEFAULT_ALPHAS, calibration_maxima, smoothing_scales
    from prorank_edge.models import default_model

    QUANTIZERS.update({gguf.GGMLQuantizationType.Q4_K: (q4k_quantize, QK),
                       gguf.GGMLQuantizationType.Q5_0: (q5_0_quantize, SUB)})

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    src = default_model().path
    config = json.loads((src / "config.json").read_text())
    text = (src / "tokenizer.json").read_text()
    prompts = PromptBuilder(Tokenizer.from_str(text), ScoringContract.load(src), None)
    report = {"model": str(src)}

    maxima, weight_maxima = calibration_maxima(src, builtin_pairs(), prompts.contract.max_length)
    scales = smoothing_scales(maxima, weight_maxima, config, DEFAULT_ALPHAS["q4_k_m"])
    backend = TorchBackend(src, device="cpu", dtype="float32")
    sums, counts, hooks = {}, {}, []
    for name, module in backend.model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
            def hook(module, inputs, name=name):
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
                sums[name] = sums.get(name, 0) + (x * x).sum(0)
                counts[name] = counts.get(name, 0) + x.shape[0]
            hooks.append(module.register_forward_pre_hook(hook))
    ids = backend.prompts.build_pairs(builtin_calibration_pairs())
    for start in range(0, len(ids), 8):
        backend.score_batch(ids[start:start + 8])  # left padding: pads are few, and they count alike everywhere
    for h in hooks:
        h.remove()
    arch = _architecture(config, src)
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch), int(config["num_hidden_layers"]))
    importance = {}
    for name, total in sums.items():
        mean = (total / counts[name]).numpy()
        weight_name = name + ".weight"
        multiplier = scales.get(weight_name, (None, None))[1]
        if multiplier is not None:
            mean = mean / (multiplier.astype(np.float64) ** 2)
        importance[names.get_name(weight_name, try_suffixes=(".weight",))] = mean
    report["calibration_prompts"] = len(ids)

    f16 = out / "smoothed-f16.gguf"
    base = out / "q4_k_m.gguf"
    if not base.exists():
        _write_unquantized(src, config, arch, text, prompts, f16, scales)
        _quantize(f16, base, "q4_k_m")
    source = {t.name: t for t in gguf.GGUFReader(str(f16)).tensors}
    for variant, use_importance in (("imatrix", True), ("uniform", False)):
        target = out / f"q4_k_m-{variant}.gguf"
        shutil.copyfile(base, target)
        reader = gguf.GGUFReader(str(target), "r+")
        started, count, checked = time.perf_counter(), {}, set()
        for tensor in reader.tensors:
            if tensor.tensor_type not in QUANTIZERS:
                continue
            quantize, block = QUANTIZERS[tensor.tensor_type]
            x = np.asarray(source[tensor.name].data, dtype=np.float32)
            if use_importance and tensor.name in importance:
                sigma2 = 2 * (x.reshape(-1, block) ** 2).mean(1)
                w = importance[tensor.name][None, :] * np.sqrt(np.repeat(sigma2, block).reshape(x.shape) + x * x)
            else:
                w = np.ones((1, x.shape[1]))
            packed = quantize(x, w)
            kind = tensor.tensor_type.name
            if kind not in checked:  # the byte layout, against gguf-py's own reader
                back = gguf.quants.dequantize(packed, tensor.tensor_type).reshape(x.shape)
                old = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(x.shape)
                report[f"{variant}_{kind}_{tensor.name}_rel_error"] = float(np.linalg.norm(back - x) / np.linalg.norm(x))
                report[f"llama_cpp_{kind}_{tensor.name}_rel_error"] = float(np.linalg.norm(old - x) / np.linalg.norm(x))
                checked.add(kind)
            tensor.data[...] = packed.reshape(tensor.data.shape)
            count[kind] = count.get(kind, 0) + 1
        reader.data.flush()
        del reader
        report[f"{variant}_tensors"] = count
        report[f"{variant}_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
