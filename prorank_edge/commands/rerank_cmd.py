"""`prorank-edge rerank`: score and sort a JSONL file of documents for one query."""

from __future__ import annotations

import json

import click

from ..errors import InputError
from .options import load_reranker, model_options


def _snippet(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@click.command("rerank")
@click.option("--query", "-q", required=True, help="The search query.")
@click.option("--docs", "-d", "docs_path", required=True, metavar="FILE",
              help="JSONL, one document per line: {\"id\" (or \"_id\"), \"text\", optional \"title\"}; - reads stdin.")
@click.option("--top-k", "-k", type=click.IntRange(min=1), default=None, help="Keep only the best K documents.")
@click.option("--instruction", default=None, help="Optional task instruction placed before the query.")
@click.option("--output", "-o", "output_format", type=click.Choice(["table", "json", "jsonl"]), default="table",
              show_default=True, help="table for people; json (one object) or jsonl (one line per document) "
                                      "for scripts.")
@click.option("--normalize/--raw", default=False, show_default=True,
              help="Report sigmoid-normalized scores in [0, 1] instead of raw logit differences.")
@click.option("--fusion-weight", type=click.FloatRange(0.0, 1.0), default=None, metavar="W",
              help="Blend with the documents' first-stage \"score\" field: W x reranker + (1 - W) x first stage, "
                   "each min-max normalized over the documents. Every document must carry a score. Default: the "
                   "model's own weight (the built-in model has one, tuned on SciFact train) when every document "
                   "carries a score, else no blending; 1 ranks by the reranker alone.")
@model_options
def rerank_command(query, docs_path, top_k, instruction, output_format, normalize, fusion_weight, model, backend,
                   device, dtype, max_length, batch_size, threads, prefix_cache):
    """Rerank documents for a query, best first.

    Every document appears exactly once in the output (unless --top-k cuts the list). The score is
    logit("1") - logit("0") of the model at the end of the ProRank prompt: higher is more relevant.

    \b
    Example:
      prorank-edge rerank --query "what causes influenza" --docs docs.jsonl --top-k 5
    """
    from ..documents import load_documents, unicode_problem
    from ..reranker import rank_documents

    if not query.strip():
        raise InputError("--query is empty")
    for option, text in (("--query", query), ("--instruction", instruction)):
        if text and (problem := unicode_problem(text)):
            raise InputError(f"{option}: {problem} (the command line holds bytes that are not UTF-8)")
    documents = load_documents(docs_path)
    unscored = next((d for d in documents if d.score is None), None)
    if fusion_weight is not None and unscored is not None:
        raise InputError(f"{docs_path}:{unscored.line}: field 'score' is missing; --fusion-weight needs a "
                         "first-stage score on every document")
    with load_reranker(model, backend, device, dtype, max_length, batch_size, threads,
                       prefix_cache) as reranker:
        records, fusion_weight = rank_documents(reranker, query, documents, instruction=instruction,
                                                normalize=normalize, fusion_weight=fusion_weight)
        info = reranker.describe()
    records = records[:top_k]
    if output_format == "json":
        click.echo(json.dumps({"query": query, "model": info, "count": len(documents),
                               "fusion_weight": fusion_weight, "results": records},
                              ensure_ascii=False, indent=2))
    elif output_format == "jsonl":
        for record in records:
            click.echo(json.dumps(record, ensure_ascii=False))
    else:
        _print_table(records)


def _print_table(records: list[dict]) -> None:
    id_width = max(2, min(24, max(len(r["id"]) for r in records)))
    click.echo(f"{'rank':>4}  {'id':<{id_width}}  {'score':>9}  text")
    for r in records:
        text = (r.get("title", "") + " " + r["text"]).strip()
        click.echo(f"{r['rank']:>4}  {r['id'][:id_width]:<{id_width}}  {r['score']:>9.4f}  {_snippet(text, 70)}")
