"""Options shared by every command that loads a reranker, so they read and behave the same everywhere."""

from __future__ import annotations

import click

from ..backends import BACKEND_NAMES


def model_options(func):
    """--model, --backend, --device, --dtype, --max-length, --batch-size, --threads, --prefix-cache."""
    options = [
        click.option("--model", "-m", default=None, metavar="M",
                     help="Checkpoint folder, exported artifact (.gguf file or ONNX folder), or Hub id such as "
                          "mixedbread-ai/mxbai-rerank-base-v2. Default: the built-in offline model."),
        click.option("--backend", type=click.Choice(("auto",) + BACKEND_NAMES), default="auto", show_default=True,
                     help="Inference engine; auto picks it from the model (an ONNX folder: onnx). openvino runs "
                          "an ONNX folder with OpenVINO (the openvino extra)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True,
                     help="torch and openvino precision; auto = bf16 on GPUs and on CPUs with native bf16 (AMX or "
                          "AVX-512 BF16), else fp32."),
        click.option("--max-length", type=click.IntRange(min=16), default=None,
                     help="Tokens per prompt, template included; only the document is cut. Default: the "
                          "model's contract (512)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Prompts per forward pass."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all)."),
        click.option("--prefix-cache/--no-prefix-cache", default=True, show_default=True,
                     help="Compute the prompt prefix a query's documents share (system prompt, instruction, "
                          "query) once per query and run only each document's own tokens; exact, so on by "
                          "default. Off scores every prompt whole."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_reranker(model, backend, device, dtype, max_length, batch_size, threads, prefix_cache=True):
    from ..reranker import Reranker

    return Reranker(model, backend=backend, device=device, dtype=dtype, max_length=max_length,
                    batch_size=batch_size, threads=threads, prefix_cache=prefix_cache)
