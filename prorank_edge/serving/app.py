"""The ASGI app of `prorank-edge serve`: Cohere/Jina and TEI rerank endpoints over one dynamic batcher.

Every body is read and validated here rather than by FastAPI's parameter binding, for three reasons: the size
limit must hold before a large body is parsed, `POST /rerank` takes two request shapes told apart by their
fields, and each error must be a JSON object whose message names the field in plain words.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..documents import unicode_problem
from ..errors import ProrankError
from .batcher import BatcherStopped, DynamicBatcher, QueueFull
from .metrics import ServerMetrics

# nginx's code for "client closed the request": only the metrics ever see it, the client is gone.
CLIENT_CLOSED = 499
COHERE_ROUTES = ("/v1/rerank", "/v2/rerank")
ROUTES = COHERE_ROUTES + ("/rerank", "/health", "/v1/models", "/metrics")


@dataclass(frozen=True)
class ServeSettings:
    """The limits of `prorank-edge serve` (its options of the same names)."""

    model_name: str
    max_batch_tokens: int | None = None
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_documents: int = 1000
    max_request_bytes: int = 10 * 1024 * 1024


class ApiError(Exception):
    """An error answered as JSON: {"error": message, "error_type": kind, "detail": ...} with `status`."""

    def __init__(self, status: int, message: str, kind: str, field: str | None = None,
                 headers: dict[str, str] | None = None, detail: Any = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.field = status, message, kind, field
        self.headers = headers
        self.detail = message if detail is None else detail

    def response(self) -> JSONResponse:
        body = {"error": self.message, "error_type": self.kind, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# ---- request shapes ----------------------------------------------------------------------------------------

def _document_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]
    raise PydanticCustomError("document", 'expected a string or an object {"text": string}')


DocumentText = Annotated[str, PlainValidator(_document_text), WithJsonSchema({
    "anyOf": [{"type": "string"},
              {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}],
})]


class RerankRequest(BaseModel):
    """Cohere (v1/v2) and Jina rerank body. Unknown fields (e.g. Cohere's max_tokens_per_doc) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="Ignored: the server answers with the model it serves.")
    query: StrictStr
    documents: list[DocumentText] = Field(description="Strings, or objects with a `text` field.")
    top_n: StrictInt | None = Field(None, ge=1, description="Return only the best N (default: all).")
    return_documents: StrictBool = Field(False, description="Include each document's text in its result.")


class TeiRerankRequest(BaseModel):
    """Hugging Face text-embeddings-inference `/rerank` body."""

    model_config = ConfigDict(extra="ignore")

    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = Field(False, description="Raw logit differences instead of scores in [0, 1].")
    return_text: StrictBool = False
    truncate: StrictBool = Field(False, description="Accepted; prompts are always cut to the model's max_length "
                                                    "the way `prorank-edge rerank` cuts them.")
    truncation_direction: StrictStr = Field("right", description="Only right: the end of a document is cut.")


class RerankResult(BaseModel):
    index: int
    relevance_score: float = Field(description="The normalized score in [0, 1] (the contract's sigmoid).")
    raw_score: float = Field(description="The raw score: logit('1') - logit('0').")
    document: dict[str, str] | None = None


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    meta: dict[str, Any]
    usage: dict[str, int]


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


def _field_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(body)"


def _validate(model: type[BaseModel], data: dict) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        first = errors[0]
        field = _field_path(first["loc"])
        if first["type"] == "missing":
            message = f"field '{field}' is missing"
        else:
            message = f"field '{field}': {first['msg'][:1].lower()}{first['msg'][1:]}"
        # `detail` keeps FastAPI's own shape (loc lists), for clients that already read it.
        detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]
        raise ApiError(422, message, "validation", field=field, detail=detail) from None


def _unprocessable(loc: tuple, problem: str) -> ApiError:
    field = _field_path(loc)
    return ApiError(422, f"field '{field}': {problem}", "validation", field=field,
                    detail=[{"loc": ["body", *loc], "msg": problem, "type": "value_error"}])


# ---- the app -------------------------------------------------------------------------------------------------

class _MetricsMiddleware:
    """Counts every HTTP request by route and status and times it (a plain ASGI middleware: it passes `receive`
    through untouched, which the disconnect watch of the rerank routes relies on)."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"  # bounded label values
        started = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is {declared} bytes; this server takes at most {limit} (--max-request-bytes)",
                       "payload_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # a chunked body, or one longer than it declared
                raise ApiError(413, f"the body is over {limit} bytes (--max-request-bytes)", "payload_too_large")
            chunks.append(chunk)
    except ClientDisconnect:  # gone before the body was in: nothing to answer, nothing queued
        raise ApiError(CLIENT_CLOSED, "the client disconnected", "client_closed") from None
    return b"".join(chunks)


def _parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(422, "the body is not UTF-8 JSON", "validation", field="(body)") from None
    except json.JSONDecodeError as exc:
        raise ApiError(422, f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                       "validation", field="(body)") from None
    if not isinstance(data, dict):
        raise ApiError(422, f"the body must be a JSON object, not {type(data).__name__}", "validation",
                       field="(body)")
    return data


async def _wait_for_disconnect(request: Request) -> None:
    """Returns once the client has gone. The body is already read, so the server's next message is the
    disconnect (or, after the response, a disconnect too)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.01)  # a server that repeats empty body messages must not make this spin


def create_app(reranker, settings: ServeSettings, metrics: ServerMetrics | None = None) -> FastAPI:
    """The app for one loaded `Reranker`; its batcher thread runs for the app's lifespan."""
    metrics = metrics or ServerMetrics()
    backend = reranker.backend
    max_tokens = settings.max_batch_tokens if settings.max_batch_tokens is not None else backend.max_batch_tokens
    reuse = reranker.prefix_cache and backend.reuses_prefix
    batcher = DynamicBatcher(backend.score_batch, reranker.batch_size, max_tokens, settings.max_wait_ms / 1000.0,
                             settings.max_queue, metrics, backend.score_with_prefix if reuse else None,
                             backend.padding_call_cost)
    contract = reranker.contract
    prompts = reranker.prompts
    info = reranker.describe()
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            # uvicorn has finished the requests in flight by now; stop() returns once the queue is empty.
            await run_in_threadpool(batcher.stop)

    app = FastAPI(title="prorank-edge", version=__version__, lifespan=lifespan,
                  description="ProRank document reranking: Cohere/Jina (`/v1/rerank`, `/v2/rerank`) and Hugging Face "
                              "TEI (`/rerank`) request shapes, with dynamic batching.")
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return ApiError(exc.status_code, str(exc.detail), kind, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):  # a bug: the client still gets JSON, never a traceback
        return ApiError(500, f"internal error ({type(exc).__name__})", "internal").response()

    def check_query(query: str) -> None:
        problem = unicode_problem(query) or (None if query.strip() else "the query is empty")
        if problem:
            raise _unprocessable(("query",), problem)

    def check_documents(field: str, texts: list[str]) -> None:
        if len(texts) > settings.max_documents:
            raise ApiError(413, f"{len(texts)} documents; this server takes at most {settings.max_documents} per "
                                f"request (--max-documents)", "payload_too_large", field=field)
        for i, text in enumerate(texts):
            if problem := unicode_problem(text):
                raise _unprocessable((field, i), problem)

    async def score(request: Request, query: str, texts: list[str]) -> tuple[np.ndarray, int] | None:
        """Raw scores and the prompts' token count, or None when the client disconnected first."""
        if batcher.full:  # before tokenizing: a full queue turns work away cheaply
            raise _queue_full(batcher.retry_after())
        try:
            token_ids = await run_in_threadpool(prompts.build, query, texts)
        except ProrankError as exc:
            raise ApiError(422, str(exc), "validation") from None
        scoring = asyncio.ensure_future(batcher.score(token_ids))
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            done, _ = await asyncio.wait({scoring, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            scoring.cancel()
            raise
        finally:
            watcher.cancel()
        if scoring not in done:
            scoring.cancel()  # drops the request's documents that are still queued
            with suppress(asyncio.CancelledError, Exception):
                await scoring
            return None
        try:
            scores = scoring.result()
        except QueueFull as exc:
            raise _queue_full(exc.retry_after) from None
        except BatcherStopped:
            raise ApiError(503, "the server is shutting down", "unavailable", headers={"Retry-After": "1"}) from None
        except Exception as exc:  # noqa: BLE001 - a backend failure, answered as JSON
            raise ApiError(500, f"scoring failed ({type(exc).__name__}: {exc})", "internal") from None
        return scores, sum(len(t) for t in token_ids)

    async def cohere_rerank(request: Request, data: dict) -> Response:
        body = _validate(RerankRequest, data)
        check_query(body.query)
        check_documents("documents", body.documents)
        outcome = await score(request, body.query, body.documents) if body.documents else (np.empty(0), 0)
        if outcome is None:
            return Response(status_code=CLIENT_CLOSED)
        raw, tokens = outcome
        normalized = contract.normalize(raw)
        # Ranked by the raw score: the sigmoid is monotonic, but float32 saturates near 0 and 1 and would tie.
        order = np.argsort(-raw, kind="stable")[: body.top_n]
        results = []
        for i in order:
            item = {"index": int(i), "relevance_score": float(normalized[i]), "raw_score": float(raw[i])}
            if body.return_documents:
                item["document"] = {"text": body.documents[i]}
            results.append(item)
        return JSONResponse({
            "id": str(uuid.uuid4()), "model": settings.model_name, "results": results,
            "meta": {"api_version": {"version": "2"}, "tokens": {"input_tokens": tokens, "output_tokens": 0}},
            "usage": {"total_tokens": tokens},
        })

    async def tei_rerank(request: Request, data: dict) -> Response:
        body = _validate(TeiRerankRequest, data)
        if body.truncation_direction.lower() != "right":
            raise _unprocessable(("truncation_direction",), "only 'right' is supported: prompts cut a document's end")
        check_query(body.query)
        check_documents("texts", body.texts)
        outcome = await score(request, body.query, body.texts) if body.texts else (np.empty(0), 0)
        if outcome is None:
            return Response(status_code=CLIENT_CLOSED)
        raw, _ = outcome
        shown = raw if body.raw_scores else contract.normalize(raw)
        ranks = []
        for i in np.argsort(-raw, kind="stable"):
            item = {"index": int(i), "score": float(shown[i])}
            if body.return_text:
                item["text"] = body.texts[i]
            ranks.append(item)
        return JSONResponse(ranks)

    body_doc = {"required": True, "content": {"application/json": {"schema": RerankRequest.model_json_schema()}}}
    both_doc = {"required": True, "content": {"application/json": {"schema": {"oneOf": [
        RerankRequest.model_json_schema(), TeiRerankRequest.model_json_schema()]}}}}

    async def cohere_route(request: Request) -> Response:
        return await cohere_rerank(request, _parse_json(await _read_body(request, settings.max_request_bytes)))

    for path in COHERE_ROUTES:
        app.add_api_route(path, cohere_route, methods=["POST"], summary="Rerank documents (Cohere / Jina shape)",
                          openapi_extra={"requestBody": body_doc}, responses={200: {"model": RerankResponse}})

    @app.post("/rerank", summary="Rerank: TEI shape (`texts`), or Cohere / Jina shape when the body has `documents`",
              openapi_extra={"requestBody": both_doc},
              responses={200: {"description": "TEI: a list of {index, score, text?}, best first; Cohere/Jina: as "
                                              "/v1/rerank"}})
    async def rerank_any(request: Request) -> Response:
        data = _parse_json(await _read_body(request, settings.max_request_bytes))
        if "documents" in data or "texts" not in data:
            if "documents" not in data:
                raise ApiError(422, "field 'texts' is missing (or 'documents', for the Cohere / Jina shape)",
                               "validation", field="texts")
            return await cohere_rerank(request, data)
        return await tei_rerank(request, data)

    @app.get("/health", summary="Liveness and queue state")
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_name, "backend": info.get("backend"),
                "queue": {"requests": batcher.active_requests, "max_requests": settings.max_queue}}

    @app.get("/v1/models", summary="The served model (OpenAI list shape)")
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": settings.model_name, "object": "model", "created": started, "owned_by": "prorank-edge",
            "backend": info.get("backend"), "max_length": contract.max_length,
        }]}

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


def _queue_full(retry_after: int) -> ApiError:
    return ApiError(503, f"the queue is full (--max-queue); retry in {retry_after} s", "overloaded",
                    headers={"Retry-After": str(retry_after)})
