"""`prorank-edge eval`: BM25 and ProRank reranking metrics on a BEIR dataset."""

from __future__ import annotations

import json

import click

from ..errors import ProrankError


@click.command("eval")
@click.option("--data", "data_spec", required=True, metavar="DIR_OR_NAME",
              help="A BEIR dataset folder, or a BEIR dataset name (e.g. scifact) to download once into the cache.")
@click.option("--split", default="test", show_default=True, help="The qrels split (qrels/SPLIT.tsv).")
@click.option("--model", default=None, help="Model folder, exported artifact or Hub id (default: the built-in model).")
@click.option("--bm25-only", is_flag=True, help="Evaluate the BM25 first stage alone; needs no model.")
@click.option("--top-k", type=click.IntRange(min=1), default=100, show_default=True,
              help="BM25 candidates per query (what the reranker reorders, and the Recall@k depth).")
@click.option("--max-queries", type=click.IntRange(min=1), default=None,
              help="Only the split's first N queries (in qrels file order).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Pairs per forward pass.")
@click.option("--max-length", type=click.IntRange(min=1), default=None,
              help="Whole prompt length in tokens (default: the model's contract).")
@click.option("--backend", type=click.Choice(["auto", "torch", "onnx", "gguf"]), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--instruction", default=None, help="A task instruction for the prompt template.")
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--run-file", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the reranked run (the BM25 run with --bm25-only) here in TREC format.")
@click.option("--quiet", is_flag=True, help="No progress bars or status lines on stderr.")
def eval_command(data_spec, split, model, bm25_only, top_k, max_queries, batch_size, max_length, backend, device,
                 instruction, output, run_file, quiet):
    """Evaluate BM25 and a ProRank reranker on a BEIR dataset split.

    BM25 (Lucene variant, k1=1.5, b=0.75, English stopwords and stemming) retrieves the top --top-k
    documents of the whole corpus for each judged query; the reranker then reorders those candidates.
    Prints nDCG@10, MRR@10 and Recall@top-k (trec_eval semantics) for both systems side by side; every
    query of the split counts.

    \b
    Examples:
      prorank-edge eval --data scifact --bm25-only
      prorank-edge eval --data ./beir/nfcorpus --model ./my-reranker --max-queries 100 --output json
    """
    from ..beir import load_beir, resolve_beir
    from ..evaluate import evaluate_reranker

    if bm25_only and model is not None:
        raise ProrankError("--bm25-only evaluates BM25 alone; leave out --model, or drop --bm25-only")
    show_progress = False if quiet else None

    def status(message: str) -> None:
        if not quiet:
            click.echo(f"prorank-edge: {message}", err=True)

    path = resolve_beir(data_spec, show_progress=show_progress)
    data = load_beir(path, split)
    subset = f" (evaluating the first {max_queries})" if max_queries and max_queries < len(data.queries) else ""
    status(f"{data.name} ({split}): {len(data.corpus)} documents, {len(data.queries)} judged queries{subset}")

    reranker = None
    if not bm25_only:
        from ..reranker import Reranker  # only here: --bm25-only must not pay for (or need) torch

        options = {"batch_size": batch_size} if batch_size is not None else {}
        reranker = Reranker(model, backend=backend, device=device, max_length=max_length, **options)
    try:
        report = evaluate_reranker(data, reranker, top_k=top_k, max_queries=max_queries, instruction=instruction,
                                   show_progress=show_progress, run_file=run_file)
    finally:
        if reranker is not None:
            reranker.close()

    if output == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.format_table())
    if run_file:
        status(f"wrote the {list(report.runs)[-1]} run to {run_file}")
