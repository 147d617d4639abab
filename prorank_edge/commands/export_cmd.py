"""`prorank-edge export`: a checkpoint becomes an ONNX folder, an OpenVINO int8 folder or a single GGUF file, then
a parity check."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..formats import DEFAULT_QUANT, QUANTS


def _quant_help() -> str:
    return ". ".join(f"{fmt}: " + ", ".join(f"{q} (default)" if q == DEFAULT_QUANT[fmt] else q for q in levels)
                     for fmt, levels in QUANTS.items()) + "."


@click.command("export")
@click.option("--model", "-m", default=None, metavar="M",
              help="Checkpoint folder or Hub id to convert (default: the built-in default model).")
@click.option("--format", "fmt", type=click.Choice(list(QUANTS)), required=True,
              help="onnx: a folder (model.onnx, tokenizer.json, contract); openvino: a folder of OpenVINO IR "
                   "graphs with 8-bit weights and activations (model.xml, model.bin, ...; read by the openvino "
                   "backend); gguf: one self-contained .gguf file (q4_lora: plus NAME.lora.gguf beside it, which "
                   "the .gguf names and needs).")
@click.option("--quant", default=None, help=_quant_help() + " fp16 is for GPUs. gguf bf16: bf16 "
              "matrices, which llama.cpp multiplies natively on CPUs with AVX-512 BF16 or AMX (1.25-1.43x f16 on "
              "an EPYC); elsewhere f16 is the unquantized level. q4_lora: 4-bit matrices on llama.cpp's fast q4_0 "
              "kernels plus a LoRA file that restores Q4_1's block offsets and keeps a merged adapter's delta exact "
              "(the built-in model keeps its ranking at 4 bits); stock llama.cpp takes it as `--lora NAME.lora.gguf`. "
              "q4_k_m: llama.cpp's mix with ffn_down and q/k/v kept at Q8_0, which hold most of its ranking loss.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Folder (onnx, openvino) or .gguf file (gguf) to write; written under a temporary name, then "
                   "renamed.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--smooth", "smoothing_alpha", type=click.FloatRange(0, 1), default=None, metavar="ALPHA",
              help="GGUF only: before quantizing, move activation outliers into the weights (SmoothQuant, "
                   "calibrated on built-in pairs; the model is unchanged in exact arithmetic), since llama.cpp "
                   "also quantizes activations. Strength 0-1; 0 turns it off. Default: 0.8 for q8_0, 0.5 for "
                   "q4_k_m, off for f16 and bf16.")
@click.option("--rank-head", is_flag=True,
              help="GGUF only: make the file a reranker that stock llama.cpp serves (`llama-server -m FILE "
                   "--reranking`, /v1/rerank) with the ProRank score and prompt. The residual stream is rotated so "
                   "that rank pooling reads the score, the LM head is stored apart from the embedding (SmolLM2: "
                   "+57 MB at f16), and an adapter can no longer be merged into the file. It still loads as a "
                   "plain causal LM, and prorank-edge scores it like the plain export.")
@click.option("--calibration-data", default=None, metavar="BEIR",
              help="openvino only: calibrate the int8 activation ranges and smoothing on queries of this BEIR folder "
                   "or dataset (BM25 top 3 + one random document each) instead of the built-in texts. Texts like "
                   "yours calibrate best (built-in model, 10 SciFact dev queries, per-query Spearman against f32: "
                   "0.988 calibrated on SciFact train, 0.979 on the built-in texts). Never calibrate on the split "
                   "you report.")
@click.option("--calibration-split", default="train", show_default=True, help="Split of --calibration-data.")
@click.option("--calibration-queries", type=click.IntRange(min=1), default=16, show_default=True,
              help="Queries of --calibration-data to calibrate on (4 pairs each).")
@click.option("--check", is_flag=True, help="Also compare nDCG@10 with the torch model on a BEIR sample.")
@click.option("--check-data", default="scifact", show_default=True, help="BEIR folder or dataset name for --check.")
@click.option("--check-split", default="test", show_default=True)
@click.option("--check-queries", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--check-top-k", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def export_command(model, fmt, quant, output, overwrite, smoothing_alpha, rank_head, calibration_data,
                   calibration_split, calibration_queries, check, check_data, check_split, check_queries, check_top_k,
                   as_json):
    """Export a reranker checkpoint to ONNX, OpenVINO or GGUF for edge inference.

    Only what scoring needs is exported: the transformer body, the last position and the score head folded
    into one fp32 row (W["1"] - W["0"]). The scoring contract travels inside the artifact, so
    `prorank-edge rerank --model OUTPUT` scores exactly like the checkpoint. At the end the artifact's size
    and its drift from the torch fp32 model on built-in pairs are printed.

    \b
    Examples:
      prorank-edge export --model ./my-reranker --format onnx --quant int8 --output ./my-reranker-onnx
      prorank-edge export --model ./my-reranker --format gguf --quant q4_k_m --output my-reranker.gguf
      prorank-edge export --model ./my-reranker --format openvino --calibration-data scifact --output ./my-ov
      prorank-edge export --format gguf --quant q4_lora --output reranker.gguf   # + reranker.lora.gguf
      prorank-edge export --format gguf --rank-head --output reranker.gguf
      llama-server -m reranker.gguf --reranking     # stock llama.cpp serves it at /v1/rerank
    """
    from ..export import export_model, human_size

    beir_check = dict(data=check_data, split=check_split, queries=check_queries, top_k=check_top_k) if check else None
    calibration = dict(data=calibration_data, split=calibration_split, queries=calibration_queries) \
        if calibration_data else None
    summary = export_model(model, fmt, output, quant=quant, overwrite=overwrite, smoothing_alpha=smoothing_alpha,
                           beir_check=beir_check, rank_head=rank_head, calibration=calibration)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    p = summary["parity_builtin"]
    quant = summary["quant"]
    click.echo(f"wrote {output} ({fmt} {quant}, {human_size(summary['size_bytes'])}) in {summary['export_seconds']} s")
    click.echo(f"parity vs torch fp32 on {p['pairs']} built-in pairs: max drift {p['max_abs_drift']:.4f}, "
               f"Spearman {p['spearman']:.4f}, top-10 agreement {p['top10_agreement']:.2f}")
    if rank_head:
        click.echo(f"rank head: llama.cpp's rank pooling gives the score within "
                   f"{summary['export']['rank_pooling_max_diff']:.4f} of the logits on built-in pairs; serve it "
                   f"with: llama-server -m {output} --reranking")
    if check:
        b = summary["parity_beir"]
        click.echo(f"nDCG@10 on {check_queries} {check_split} queries (BM25 top {check_top_k}): "
                   f"torch fp32 {b['torch_fp32']['ndcg@10']:.4f}, artifact {b['artifact']['ndcg@10']:.4f}, "
                   f"BM25 {b['bm25']['ndcg@10']:.4f}")
