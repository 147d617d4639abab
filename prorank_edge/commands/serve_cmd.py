"""`prorank-edge serve`: the reranker behind an HTTP API (Cohere/Jina and TEI shapes) with dynamic batching."""

from __future__ import annotations

import importlib.util

import click

from ..errors import MissingExtraError
from .options import load_reranker, model_options

# module -> the PyPI name the `serve` extra installs it under
_SERVE_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "prometheus_client": "prometheus-client"}


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 serves every interface (there is no authentication).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="TCP port; 0 picks a free one (the start-up line says which).")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=None, metavar="N",
              help="Cap on documents x longest prompt per forward pass, across requests. Default: the backend's "
                   "own cap (as offline scoring uses).")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long an idle model waits for more requests to share a batch with the first one.")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests queued or being scored at once; the next gets 503 with Retry-After.")
@click.option("--max-documents", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Documents per request; more gets 413.")
@click.option("--max-request-bytes", type=click.IntRange(min=1), default=10 * 1024 * 1024, show_default=True,
              help="Request body size; more gets 413.")
@click.option("--model-name", default=None,
              help="The name answered as `model` and listed by /v1/models. Default: the --model value, or the "
                   "built-in model's name.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="uvicorn's log level.")
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log one line per request.")
@model_options
def serve_command(host, port, max_batch_tokens, max_wait_ms, max_queue, max_documents, max_request_bytes, model_name,
                  log_level, access_log, model, backend, device, dtype, max_length, batch_size, threads, prefix_cache):
    """Serve a reranker over HTTP (needs the serve extra: pip install 'prorank-edge[serve]').

    \b
    POST /v1/rerank, /v2/rerank  Cohere / Jina shape: {query, documents, top_n?, return_documents?}
                                 -> {id, model, results: [{index, relevance_score, raw_score, document?}],
                                 meta, usage}; relevance_score is in [0, 1], raw_score is logit("1") - logit("0")
    POST /rerank                 TEI shape: {query, texts, raw_scores?, return_text?} -> [{index, score, text?}]
                                 (the Cohere / Jina shape too, when the body has "documents")
    GET  /health, /v1/models, /metrics (Prometheus), /docs (OpenAPI)

    Documents of concurrent requests are scored together in length-bucketed batches by one worker thread;
    scores equal `prorank-edge rerank` on the same model. SIGTERM or Ctrl-C stops accepting connections,
    finishes the requests in flight, then exits.

    \b
    Example:
      prorank-edge serve --model ./my-reranker --port 8080
      curl -s localhost:8080/v1/rerank -H 'content-type: application/json' \\
           -d '{"query": "what causes influenza", "documents": ["a virus", "the weather"]}'
    """
    missing = next((pkg for module, pkg in _SERVE_MODULES.items() if importlib.util.find_spec(module) is None), None)
    if missing:
        raise MissingExtraError("prorank-edge serve", "serve", missing)
    from ..serving.app import ServeSettings
    from ..serving.server import bind_socket, run_server, url_of

    sock = bind_socket(host, port)
    try:
        with load_reranker(model, backend, device, dtype, max_length, batch_size, threads,
                       prefix_cache) as reranker:
            source = reranker.source
            settings = ServeSettings(
                model_name=model_name or (source.name if source is not None else model) or "prorank-edge",
                max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, max_queue=max_queue,
                max_documents=max_documents, max_request_bytes=max_request_bytes)
            info = reranker.describe()
            click.echo(f"prorank-edge serve: {settings.model_name} on {info.get('backend')} "
                       f"({info.get('device', 'cpu')}); listening on {url_of(sock)} (API docs at /docs)", err=True)
            run_server(reranker, settings, sock, log_level=log_level, access_log=access_log)
    finally:
        sock.close()
    click.echo("prorank-edge serve: stopped", err=True)
