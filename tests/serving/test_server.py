"""`prorank-edge serve` as a real server: a subprocess on a free loopback port, called over HTTP.

The tiny random Qwen2 runs in float32 on the CPU, so its scores are deterministic and can be compared with
`prorank-edge rerank`. Tests that need the model to be busy start the same command with the torch backend's
score_batch held shut by a file (a gate), which only the test opens.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import requires_torch

httpx = pytest.importorskip("httpx")
for _module in ("fastapi", "uvicorn", "prometheus_client"):
    pytest.importorskip(_module)

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from prorank_edge.cli import main  # noqa: E402

pytestmark = requires_torch

MODEL_ARGS = ["--dtype", "float32", "--device", "cpu", "--threads", "1"]
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
START_TIMEOUT_S = 180
TOL = 2e-5  # float32 noise of another batch composition (~1e-7) plus the CLI rounding to 6 decimals

QUERY = "what causes influenza"
DOCS = [
    "Influenza is caused by influenza viruses of the family Orthomyxoviridae.",
    "Grippe : causée par des virus — « vrai » ou « faux » ?",
    "流感是由流感病毒引起的急性呼吸道传染病。",
    "الإنفلونزا مرض فيروسي يصيب الجهاز التنفسي",
    "🦠 a virus emoji, then 🤒 a face with a thermometer",
    "Ελληνικά: η γρίπη προκαλείται από ιούς.",
    "Zero\u200bwidth space and a combining accent: e\u0301",
]

# Runs the real CLI with TorchBackend.score_batch waiting while the gate file exists (argv: gate, entered, CLI args).
GATED = """
import sys, time
from pathlib import Path
from prorank_edge.backends.torch_backend import TorchBackend
gate, entered = Path(sys.argv[1]), Path(sys.argv[2])
def gated(method):
    def wait_then_score(self, *args):
        entered.touch()
        deadline = time.monotonic() + 60
        while gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return method(self, *args)
    return wait_then_score
TorchBackend.score_batch = gated(TorchBackend.score_batch)
TorchBackend.score_with_prefix = gated(TorchBackend.score_with_prefix)
TorchBackend.padding_call_cost = None  # full batches: these tests count merges (padding cuts: test_batcher)
from prorank_edge.cli import main
sys.exit(main(sys.argv[3:], prog_name="prorank-edge"))
"""


def wait_for(condition, what: str, timeout: float = 20.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


class Gate:
    """Holds the server's model inside score_batch while shut."""

    def __init__(self, folder: Path):
        self.path, self.entered = folder / "gate", folder / "entered"

    def shut(self) -> None:
        self.entered.unlink(missing_ok=True)
        self.path.touch()

    def open(self) -> None:
        self.path.unlink(missing_ok=True)

    def wait_entered(self) -> None:
        wait_for(self.entered.exists, "the model to start a batch")


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, body=None, **kw) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=60, **kw) if body is not None \
            else httpx.post(self.url + path, timeout=60, **kw)

    def metric(self, name: str, **labels) -> float:
        text = self.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def queued(self) -> int:
        return self.get("/health").json()["queue"]["requests"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_server(folder: Path, model_dir: Path, *options: str, gate: Gate | None = None) -> Server:
    log = folder / "server.log"
    args = ["serve", "--model", str(model_dir), *MODEL_ARGS, "--host", "127.0.0.1", "--port", "0", *options]
    command = [sys.executable, "-c", GATED, str(gate.path), str(gate.entered), *args] if gate else \
        [sys.executable, "-m", "prorank_edge.cli", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env)
    server = None
    try:
        def listening():
            assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log.read_text()}"
            found = LISTENING.search(log.read_text(errors="replace"))
            return found and found.group(1)

        url = wait_for(listening, "the start-up line", timeout=START_TIMEOUT_S, interval=0.1)
        server = Server(proc, url, log)

        def healthy():
            assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log.read_text()}"
            try:
                return server.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, "/health", timeout=60, interval=0.1)
        return server
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise


@pytest.fixture(scope="module")
def server(tiny_qwen2_dir, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("server"), tiny_qwen2_dir, "--max-documents", "8",
                       "--max-request-bytes", "20000", "--model-name", "tiny-qwen2")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def gated(tiny_qwen2_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gated")
    gate = Gate(folder)
    # Cache off: these tests count how requests merge into forward passes (test_batcher covers the cache on).
    srv = start_server(folder, tiny_qwen2_dir, "--max-queue", "3", "--no-prefix-cache", gate=gate)
    yield srv, gate
    gate.open()
    srv.stop()


@pytest.fixture(scope="module")
def offline(tiny_qwen2_dir):
    """Raw scores as `prorank-edge rerank` computes them (Reranker.predict), for many requests cheaply."""
    from prorank_edge.reranker import Reranker

    reranker = Reranker(str(tiny_qwen2_dir), device="cpu", dtype="float32")
    yield lambda query, docs: reranker.predict([(query, d) for d in docs])
    reranker.close()


def cli_rerank(model_dir: Path, tmp_path: Path, query: str, docs: list[str], normalize: bool) -> np.ndarray:
    """Scores by document index from the real `prorank-edge rerank --output json`."""
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": d}, ensure_ascii=False) + "\n"
                            for i, d in enumerate(docs)), encoding="utf-8")
    result = CliRunner().invoke(main, ["rerank", "--query", query, "--docs", str(path), "--model", str(model_dir),
                                       "--output", "json", "--normalize" if normalize else "--raw",
                                       "--dtype", "float32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    scores = np.full(len(docs), np.nan)
    for record in json.loads(result.stdout)["results"]:
        scores[int(record["id"])] = record["score"]
    return scores


def assert_ranked(results: list[dict], key: str) -> None:
    values = [r[key] for r in results]
    assert values == sorted(values, reverse=True)


# ---- request shapes ----------------------------------------------------------------------------------------

def test_cohere_shape_equals_prorank_edge_rerank(server, tiny_qwen2_dir, tmp_path):
    raw = cli_rerank(tiny_qwen2_dir, tmp_path, QUERY, DOCS, normalize=False)
    normalized = cli_rerank(tiny_qwen2_dir, tmp_path, QUERY, DOCS, normalize=True)
    gaps = np.diff(np.sort(raw))
    assert gaps.min() > 5 * TOL, "the test documents must score apart, or swapped results could pass"

    response = server.post("/v1/rerank", {"model": "anything", "query": QUERY, "documents": DOCS,
                                          "return_documents": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-qwen2" and body["id"]
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCS)))
    assert_ranked(results, "raw_score")
    for r in results:
        assert r["raw_score"] == pytest.approx(raw[r["index"]], abs=TOL)
        assert r["relevance_score"] == pytest.approx(normalized[r["index"]], abs=TOL)
        assert 0.0 <= r["relevance_score"] <= 1.0
        assert r["document"] == {"text": DOCS[r["index"]]}  # unicode comes back unchanged
    assert body["usage"]["total_tokens"] == body["meta"]["tokens"]["input_tokens"] > 0


def test_top_n_cuts_the_ranking_and_documents_are_off_by_default(server, offline):
    raw = offline(QUERY, DOCS)
    results = server.post("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": 3}).json()["results"]
    assert [r["index"] for r in results] == list(np.argsort(-raw, kind="stable")[:3])
    assert all("document" not in r for r in results)
    many = server.post("/v1/rerank", {"query": QUERY, "documents": DOCS[:2], "top_n": 50}).json()["results"]
    assert len(many) == 2


def test_documents_as_objects_and_the_rerank_route(server, offline):
    docs = [{"text": d} for d in DOCS[:4]]
    raw = offline(QUERY, DOCS[:4])
    for path in ("/rerank", "/v1/rerank"):
        body = server.post(path, {"query": QUERY, "documents": docs, "return_documents": True}).json()
        assert {r["index"]: r["raw_score"] for r in body["results"]} == pytest.approx(dict(enumerate(raw)), abs=TOL)
        assert [r["document"]["text"] for r in body["results"]] == [DOCS[r["index"]] for r in body["results"]]


def test_tei_shape(server, offline, tiny_qwen2_dir):
    from prorank_edge.contract import ScoringContract

    raw = offline(QUERY, DOCS)
    ranks = server.post("/rerank", {"query": QUERY, "texts": DOCS}).json()
    assert isinstance(ranks, list) and sorted(r["index"] for r in ranks) == list(range(len(DOCS)))
    assert_ranked(ranks, "score")
    normalized = ScoringContract.load(tiny_qwen2_dir).normalize(raw)
    assert {r["index"]: r["score"] for r in ranks} == pytest.approx(dict(enumerate(normalized)), abs=TOL)
    assert all("text" not in r for r in ranks)

    ranks = server.post("/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True,
                                    "truncate": True, "truncation_direction": "Right"}).json()
    assert {r["index"]: r["score"] for r in ranks} == pytest.approx(dict(enumerate(raw)), abs=TOL)
    assert all(r["text"] == DOCS[r["index"]] for r in ranks)


def test_empty_documents_list(server):
    before = server.metric("prorank_documents_scored_total")
    body = server.post("/v1/rerank", {"query": QUERY, "documents": []}).json()
    assert body["results"] == [] and body["usage"]["total_tokens"] == 0
    assert server.post("/rerank", {"query": QUERY, "texts": []}).json() == []
    assert server.metric("prorank_documents_scored_total") == before


def test_official_cohere_clients(server, offline):
    cohere = pytest.importorskip("cohere")
    raw = offline(QUERY, DOCS)
    best = list(np.argsort(-raw, kind="stable"))

    v2 = cohere.ClientV2(api_key="unused", base_url=server.url, timeout=60)
    response = v2.rerank(model="tiny-qwen2", query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in response.results] == best[:3]
    assert all(0.0 <= r.relevance_score <= 1.0 for r in response.results)
    assert response.results[0].relevance_score >= response.results[-1].relevance_score

    v1 = cohere.Client(api_key="unused", base_url=server.url, timeout=60)
    response = v1.rerank(model="tiny-qwen2", query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    assert [r.index for r in response.results] == best[:2]
    assert [r.document.text for r in response.results] == [DOCS[i] for i in best[:2]]


# ---- errors --------------------------------------------------------------------------------------------------

BAD_BODIES = [
    ("/v1/rerank", {"documents": ["a"]}, "query", "field 'query' is missing"),
    ("/v1/rerank", {"query": "q"}, "documents", "field 'documents' is missing"),
    ("/v1/rerank", {"query": 5, "documents": ["a"]}, "query", "field 'query': input should be a valid string"),
    ("/v1/rerank", {"query": "q", "documents": "a"}, "documents", "field 'documents': input should be a valid list"),
    ("/v1/rerank", {"query": "q", "documents": ["a", 3]}, "documents[1]", "field 'documents[1]': expected a string"),
    ("/v1/rerank", {"query": "q", "documents": [{"txt": "a"}]}, "documents[0]", "documents[0]"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, "top_n", "field 'top_n': input should be greater"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "2"}, "top_n", "field 'top_n'"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents",
     "field 'return_documents'"),
    ("/v1/rerank", {"query": "   ", "documents": ["a"]}, "query", "field 'query': the query is empty"),
    ("/rerank", {"query": "q"}, "texts", "field 'texts' is missing"),
    ("/rerank", {"query": "q", "texts": ["a", None]}, "texts[1]", "field 'texts[1]'"),
    ("/rerank", {"query": "q", "texts": ["a"], "raw_scores": 1}, "raw_scores", "field 'raw_scores'"),
    ("/rerank", {"query": "q", "texts": ["a"], "truncation_direction": "left"}, "truncation_direction",
     "only 'right' is supported"),
]


@pytest.mark.parametrize("path,body,field,message", BAD_BODIES)
def test_a_bad_body_is_422_naming_the_field(server, path, body, field, message):
    response = server.post(path, body)
    assert response.status_code == 422
    error = response.json()
    assert error["field"] == field and message in error["error"]
    assert error["error_type"] == "validation"
    assert "Traceback" not in response.text


@pytest.mark.parametrize("content,message", [
    (b'{"query": "q", "documents": ["a"', "the body is not valid JSON"),
    (b'["q", "a"]', "the body must be a JSON object"),
    (b"", "the body is not valid JSON"),
    (b'{"query": "q", "documents": ["ok", "\\ud800"]}', "field 'documents[1]': invalid Unicode: a lone surrogate"),
    (b'{"query": "\\udfff", "texts": ["ok"]}', "field 'query': invalid Unicode"),
])
def test_unparseable_bodies_are_422_json(server, content, message):
    path = "/rerank" if b"texts" in content else "/v1/rerank"
    response = server.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert message in response.json()["error"]


def test_too_many_documents_or_bytes_is_413(server):
    response = server.post("/v1/rerank", {"query": "q", "documents": ["d"] * 9})
    assert response.status_code == 413 and "at most 8" in response.json()["error"]
    response = server.post("/rerank", {"query": "q", "texts": ["d"] * 9})
    assert response.status_code == 413
    response = server.post("/v1/rerank", {"query": "q", "documents": ["x" * 25000]})
    assert response.status_code == 413 and "at most 20000" in response.json()["error"]

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        yield b'{"query": "q", "documents": ["'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"]}'

    response = server.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over 20000 bytes" in response.json()["error"]


def test_unknown_routes_are_json(server):
    response = server.get("/nope")
    assert response.status_code == 404 and response.json()["error_type"] == "not_found"
    assert server.get("/v1/rerank").status_code == 405


# ---- health, models, metrics ------------------------------------------------------------------------------

def test_health_models_and_metrics(server):
    assert server.get("/health").json()["status"] == "ok"
    models = server.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny-qwen2"]
    assert server.get("/openapi.json").json()["paths"].keys() >= {"/v1/rerank", "/v2/rerank", "/rerank"}

    scored = server.metric("prorank_documents_scored_total")
    batches = server.metric("prorank_batch_size_count")
    requests = server.metric("prorank_requests_total", route="/v1/rerank", status="200")
    latencies = server.metric("prorank_request_duration_seconds_count", route="/v1/rerank")
    server.post("/v1/rerank", {"query": QUERY, "documents": DOCS[:5]})
    response = server.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert server.metric("prorank_documents_scored_total") == scored + 5
    assert server.metric("prorank_batch_size_count") == batches + 1
    assert server.metric("prorank_requests_total", route="/v1/rerank", status="200") == requests + 1
    assert server.metric("prorank_request_duration_seconds_count", route="/v1/rerank") == latencies + 1
    assert server.metric("prorank_queue_requests") == 0 and server.metric("prorank_queue_documents") == 0


# ---- batching, queue limit, disconnects, shutdown (the model held busy by a gate) --------------------------

class Call(threading.Thread):
    """One request in the background (a client that waits for its answer)."""

    def __init__(self, server: Server, body: dict):
        super().__init__(daemon=True)
        self.server, self.body, self.response = server, body, None

    def run(self):
        self.response = self.server.post("/v1/rerank", self.body)

    def result(self) -> httpx.Response:
        self.join(60)
        assert self.response is not None, "the request did not finish"
        return self.response


def assert_own_scores(response: httpx.Response, docs: list[str], offline) -> None:
    assert response.status_code == 200, response.text
    raw = offline(QUERY, docs)
    got = {r["index"]: r["raw_score"] for r in response.json()["results"]}
    assert got == pytest.approx(dict(enumerate(raw)), abs=TOL)


def test_concurrent_requests_share_a_batch_and_a_full_queue_is_503(gated, offline):
    server, gate = gated
    batches = server.metric("prorank_batch_size_count")
    batched = server.metric("prorank_batch_size_sum")
    a, b, c = DOCS[:2], DOCS[2:5], DOCS[3:7]
    gate.shut()
    try:
        first = Call(server, {"query": QUERY, "documents": a})
        first.start()
        gate.wait_entered()
        others = [Call(server, {"query": QUERY, "documents": docs}) for docs in (b, c)]
        for call in others:
            call.start()
        wait_for(lambda: server.queued() == 3, "three requests in the queue")
        full = server.post("/v1/rerank", {"query": QUERY, "documents": DOCS[:1]})
        assert full.status_code == 503 and full.headers["retry-after"].isdigit()
        assert int(full.headers["retry-after"]) >= 1 and "queue is full" in full.json()["error"]
    finally:
        gate.open()
    for call, docs in zip([first, *others], (a, b, c)):
        assert_own_scores(call.result(), docs, offline)
    # A alone, then B and C, queued while A was scored, together in one forward pass.
    assert server.metric("prorank_batch_size_count") == batches + 2
    assert server.metric("prorank_batch_size_sum") == batched + len(a) + len(b) + len(c)


def raw_post(url: str, path: str, body: dict) -> socket.socket:
    """A request sent on a bare socket, so the test can hang up before the answer."""
    parts = urlsplit(url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_client_that_disconnects_has_its_work_dropped(gated, offline):
    server, gate = gated
    scored = server.metric("prorank_documents_scored_total")
    dropped = server.metric("prorank_documents_dropped_total")
    closed = server.metric("prorank_requests_total", route="/v1/rerank", status="499")
    kept, gone = DOCS[:2], DOCS[2:7]
    gate.shut()
    try:
        first = Call(server, {"query": QUERY, "documents": kept})
        first.start()
        gate.wait_entered()
        sock = raw_post(server.url, "/v1/rerank", {"query": QUERY, "documents": gone})
        wait_for(lambda: server.queued() == 2, "the second request in the queue")
        sock.close()
        wait_for(lambda: server.queued() == 1, "the disconnected request to leave the queue")
        assert server.metric("prorank_documents_dropped_total") == dropped + len(gone)
    finally:
        gate.open()
    assert_own_scores(first.result(), kept, offline)
    wait_for(lambda: server.metric("prorank_queue_documents") == 0, "an empty queue")
    assert server.metric("prorank_documents_scored_total") == scored + len(kept)  # nothing of the gone one
    assert server.metric("prorank_requests_total", route="/v1/rerank", status="499") == closed + 1


def test_sigterm_finishes_requests_in_flight_then_exits(tiny_qwen2_dir, tmp_path, offline):
    gate = Gate(tmp_path)
    server = start_server(tmp_path, tiny_qwen2_dir, gate=gate)
    parts = urlsplit(server.url)
    try:
        gate.shut()
        call = Call(server, {"query": QUERY, "documents": DOCS[:3]})
        call.start()
        gate.wait_entered()
        server.proc.send_signal(signal.SIGTERM)

        def refused():
            try:
                socket.create_connection((parts.hostname, parts.port), timeout=2).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_for(refused, "the server to stop accepting connections")
        assert call.is_alive() and server.proc.poll() is None  # the request in flight is still being served
        gate.open()
        assert_own_scores(call.result(), DOCS[:3], offline)
        assert server.proc.wait(30) == 0
        log = server.log.read_text()
        assert "prorank-edge serve: stopped" in log and "Traceback" not in log
    finally:
        gate.open()
        server.stop()


def test_serve_help_and_a_taken_port(server, tiny_qwen2_dir):
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--max-batch-tokens", "--max-wait-ms", "--max-queue", "--max-documents", "--max-request-bytes"):
        assert option in result.output
    port = str(urlsplit(server.url).port)
    result = subprocess.run([sys.executable, "-m", "prorank_edge.cli", "serve", "--model", str(tiny_qwen2_dir),
                             "--port", port], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_serve_without_the_serve_extra_says_what_to_install(monkeypatch):
    import importlib.util

    from prorank_edge.commands import serve_cmd

    real = importlib.util.find_spec
    monkeypatch.setattr(serve_cmd.importlib.util, "find_spec", lambda name: None if name == "uvicorn" else real(name))
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2
    assert "pip install 'prorank-edge[serve]'" in result.output and "'uvicorn'" in result.output
