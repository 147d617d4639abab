"""`prorank-edge export`: a checkpoint becomes an ONNX folder or a single GGUF file, then a parity check."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..errors import ProrankError

QUANTS = {"onnx": ("fp32", "fp16", "int8", "int4"), "gguf": ("f16", "q8_0", "q4_k_m")}
# The 8-bit levels: the smallest that keep ranking close to fp32 (Spearman on SmolLM2: onnx int8 0.998, gguf
# q8_0 0.996 with smoothing; the 4-bit levels 0.989 and 0.978).
DEFAULT_QUANT = {"onnx": "int8", "gguf": "q8_0"}


def artifact_size(path: Path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    return f"{size:.1f} GB"


def run_export(model_dir: Path, fmt: str, quant: str, output: Path, overwrite: bool,
               smoothing_alpha: float | None = None) -> dict:
    if fmt == "onnx":
        from ..export.onnx_export import export_onnx

        return export_onnx(model_dir, output, quant=quant, overwrite=overwrite)
    from ..export.gguf_export import export_gguf

    return export_gguf(model_dir, output, quant=quant, overwrite=overwrite, smoothing_alpha=smoothing_alpha)


def check_parity(model_dir: Path, artifact: Path, pairs=None, device: str = "cpu") -> dict:
    """Score the same pairs with the torch fp32 reference and with the artifact; summarize the drift."""
    from ..export.parity import builtin_pairs, groups_by_query, parity_summary
    from ..reranker import Reranker

    pairs = pairs or builtin_pairs()
    with Reranker(str(model_dir), backend="torch", dtype="float32", device=device) as reference:
        expected = reference.predict(pairs)
    with Reranker(str(artifact), device=device) as candidate:
        got = candidate.predict(pairs)
    return parity_summary(expected, got, groups_by_query(pairs))


def check_beir(model_dir: Path, artifact: Path, data: str, split: str, queries: int, top_k: int) -> dict:
    """nDCG@10 of the reference and of the artifact on the same BM25 candidates of a BEIR sample."""
    from ..beir import load_beir, resolve_beir
    from ..evaluate import evaluate_reranker
    from ..reranker import Reranker

    beir = load_beir(resolve_beir(data), split)
    out = {}
    for name, path, options in (("torch_fp32", model_dir, {"backend": "torch", "dtype": "float32"}),
                                ("artifact", artifact, {})):
        with Reranker(str(path), **options) as reranker:
            report = evaluate_reranker(beir, reranker, top_k=top_k, max_queries=queries)
        out[name] = report.to_dict()["metrics"]["reranker"]
    out["bm25"] = report.to_dict()["metrics"]["bm25"]
    return out


@click.command("export")
@click.option("--model", "-m", default=None, metavar="M",
              help="Checkpoint folder or Hub id to convert (default: the built-in default model).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "gguf"]), required=True,
              help="onnx: a folder (model.onnx, tokenizer.json, contract); gguf: one self-contained .gguf file.")
@click.option("--quant", default=None,
              help="onnx: fp32, fp16 (GPU), int8 (default), int4. gguf: f16, q8_0 (default), q4_k_m.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Folder (onnx) or .gguf file (gguf) to write; written under a temporary name, then renamed.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--smooth", "smoothing_alpha", type=click.FloatRange(0, 1), default=None, metavar="ALPHA",
              help="GGUF only: before quantizing, move activation outliers into the weights (SmoothQuant, "
                   "calibrated on built-in pairs; the model is unchanged in exact arithmetic), since llama.cpp "
                   "also quantizes activations. Strength 0-1; 0 turns it off. Default: 0.8 for q8_0, 0.5 for "
                   "q4_k_m, off for f16.")
@click.option("--check", is_flag=True, help="Also compare nDCG@10 with the torch model on a BEIR sample.")
@click.option("--check-data", default="scifact", show_default=True, help="BEIR folder or dataset name for --check.")
@click.option("--check-split", default="test", show_default=True)
@click.option("--check-queries", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--check-top-k", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def export_command(model, fmt, quant, output, overwrite, smoothing_alpha, check, check_data, check_split, check_queries,
                   check_top_k, as_json):
    """Export a reranker checkpoint to ONNX or GGUF for edge inference.

    Only what scoring needs is exported: the transformer body, the last position and the score head folded
    into one fp32 row (W["1"] - W["0"]). The scoring contract travels inside the artifact, so
    `prorank-edge rerank --model OUTPUT` scores exactly like the checkpoint. At the end the artifact's size
    and its drift from the torch fp32 model on built-in pairs are printed.

    \b
    Examples:
      prorank-edge export --model ./my-reranker --format onnx --quant int8 --output ./my-reranker-onnx
      prorank-edge export --model ./my-reranker --format gguf --quant q4_k_m --output my-reranker.gguf
    """
    from ..models import resolve_model

    quant = (quant or DEFAULT_QUANT[fmt]).lower()
    if quant not in QUANTS[fmt]:
        raise ProrankError(f"--quant {quant!r} is not a {fmt} level; choose one of: {', '.join(QUANTS[fmt])}")
    if smoothing_alpha is not None and fmt != "gguf":
        raise ProrankError("--smooth applies to GGUF exports only (ONNX int8/int4 keep activations in fp32)")
    if fmt == "gguf" and output.suffix != ".gguf":
        raise ProrankError(f"{output}: a GGUF output must be a file name ending in .gguf")
    if output.exists() and not overwrite:
        raise ProrankError(f"{output}: already exists (pass --overwrite to replace it)")
    if not output.parent.exists():
        raise ProrankError(f"{output.parent}: the output's folder does not exist")
    source = resolve_model(model)
    if source.kind != "torch":
        raise ProrankError(f"{source.path}: is already a {source.kind} artifact; export needs a transformers checkpoint")
    started = time.perf_counter()
    info = run_export(source.path, fmt, quant, output, overwrite, smoothing_alpha)
    summary = {"output": str(output), "format": fmt, "quant": quant, "size_bytes": artifact_size(output),
               "export_seconds": round(time.perf_counter() - started, 1), "export": info,
               "parity_builtin": check_parity(source.path, output)}
    if check:
        summary["parity_beir"] = check_beir(source.path, output, check_data, check_split, check_queries, check_top_k)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    p = summary["parity_builtin"]
    click.echo(f"wrote {output} ({fmt} {quant}, {human_size(summary['size_bytes'])}) in {summary['export_seconds']} s")
    click.echo(f"parity vs torch fp32 on {p['pairs']} built-in pairs: max drift {p['max_abs_drift']:.4f}, "
               f"Spearman {p['spearman']:.4f}, top-10 agreement {p['top10_agreement']:.2f}")
    if check:
        b = summary["parity_beir"]
        click.echo(f"nDCG@10 on {check_queries} {check_split} queries (BM25 top {check_top_k}): "
                   f"torch fp32 {b['torch_fp32']['ndcg@10']:.4f}, artifact {b['artifact']['ndcg@10']:.4f}, "
                   f"BM25 {b['bm25']['ndcg@10']:.4f}")
