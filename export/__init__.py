"""The export layer (installed as `prorank_edge.export`; needs the `export` extra): a transformers checkpoint
becomes an ONNX folder (`onnx_export`), an OpenVINO int8 folder (`openvino_export`, the openvino-export extra) or
one GGUF file (`gguf_export`), then its drift from the torch reference is measured (`parity`). Heavy imports
happen inside the functions.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import ProrankError
from ..formats import DEFAULT_QUANT, GGUF_SUFFIX, QUANTS


def check_export_request(fmt: str, quant: str | None, output: Path, overwrite: bool,
                         smoothing_alpha: float | None = None, rank_head: bool = False,
                         calibration: dict | None = None) -> str:
    """The quantization level to use, after the checks that need no model; a bad request raises naming it."""
    if fmt not in QUANTS:
        raise ProrankError(f"unknown export format {fmt!r}; choose one of: {', '.join(QUANTS)}")
    quant = (quant or DEFAULT_QUANT[fmt]).lower()
    if quant not in QUANTS[fmt]:
        raise ProrankError(f"--quant {quant!r} is not a {fmt} level; choose one of: {', '.join(QUANTS[fmt])}")
    if smoothing_alpha is not None and fmt != "gguf":
        raise ProrankError("--smooth applies to GGUF exports only (ONNX w8a8 smooths with its own calibrated "
                           "alpha; the other ONNX levels keep activations in fp32)")
    if rank_head and fmt != "gguf":
        raise ProrankError("--rank-head applies to GGUF exports only (it is what llama.cpp's rank pooling reads)")
    if calibration is not None and fmt != "openvino":
        raise ProrankError("--calibration-data applies to OpenVINO exports only (the other levels calibrate on "
                           "built-in pairs)")
    if fmt == "gguf" and output.suffix != GGUF_SUFFIX:
        raise ProrankError(f"{output}: a GGUF output must be a file name ending in {GGUF_SUFFIX}")
    if output.exists() and not overwrite:
        raise ProrankError(f"{output}: already exists (pass --overwrite to replace it)")
    if not output.parent.exists():
        raise ProrankError(f"{output.parent}: the output's folder does not exist")
    return quant


def run_export(model_dir: Path, fmt: str, quant: str, output: Path, overwrite: bool,
               smoothing_alpha: float | None = None, rank_head: bool = False, calibration: dict | None = None) -> dict:
    """Export `model_dir` to `output` in one format and level; returns the exporter's info. calibration: keyword
    arguments of parity.beir_calibration_pairs (data, split, queries) for the openvino level."""
    if fmt == "onnx":
        from .onnx_export import export_onnx

        return export_onnx(model_dir, output, quant=quant, overwrite=overwrite)
    if fmt == "openvino":
        from .openvino_export import export_openvino
        from .parity import beir_calibration_pairs

        pairs = beir_calibration_pairs(**calibration) if calibration is not None else None
        info = export_openvino(model_dir, output, quant=quant, overwrite=overwrite, calibration_pairs=pairs)
        if calibration is not None:
            info["openvino"]["calibration"] += f" from {calibration['data']} ({calibration['split']} split)"
        return info
    from .gguf_export import export_gguf

    return export_gguf(model_dir, output, quant=quant, overwrite=overwrite, smoothing_alpha=smoothing_alpha,
                       rank_head=rank_head)


def export_model(model: str | None, fmt: str, output: Path, quant: str | None = None, overwrite: bool = False,
                 smoothing_alpha: float | None = None, beir_check: dict | None = None, rank_head: bool = False,
                 calibration: dict | None = None) -> dict:
    """Export a model (checkpoint folder, Hub id, or None for the built-in default) and measure the result.

    Returns a summary: what was written, its size, its drift from torch fp32 on built-in pairs and, with
    `beir_check` (keyword arguments of parity.check_beir: data, split, queries, top_k), nDCG@10 of both.
    """
    from ..models import resolve_model
    from .parity import check_beir, check_parity

    output = Path(output)
    quant = check_export_request(fmt, quant, output, overwrite, smoothing_alpha, rank_head, calibration)
    source = resolve_model(model)
    if source.kind != "torch":
        raise ProrankError(f"{source.path}: is already a {source.kind} artifact; export needs a transformers "
                           "checkpoint")
    started = time.perf_counter()
    info = run_export(source.path, fmt, quant, output, overwrite, smoothing_alpha, rank_head, calibration)
    summary = {"output": str(output), "format": fmt, "quant": quant, "size_bytes": artifact_size(output),
               "export_seconds": round(time.perf_counter() - started, 1), "export": info,
               "parity_builtin": check_parity(source.path, output)}
    if beir_check is not None:
        summary["parity_beir"] = check_beir(source.path, output, **beir_check)
    return summary


def artifact_size(path: Path) -> int:
    """Bytes of a file (with the LoRA file beside a q4_lora GGUF), or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        from .gguf_lora import lora_path_for

        lora = lora_path_for(path)
        extra = lora.stat().st_size if path.suffix == GGUF_SUFFIX and lora != path and lora.is_file() else 0
        return path.stat().st_size + extra
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    return f"{size:.1f} GB"
