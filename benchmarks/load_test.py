#!/usr/bin/env python
"""Bounded load test of `prorank-edge serve` on loopback: SciFact queries with their BM25 candidates.

It scores every request offline first (one `Reranker.rank` per query, as `prorank-edge bench` measures docs/s),
then starts the server on a free 127.0.0.1 port and, for each client count, sends a fixed number of requests
from that many concurrent clients (keep-alive connections, each waiting for its answer before the next). It
reports requests/s, documents/s, p50/p95/p99 latency, the share of the offline docs/s the server reaches, the
server's mean batch size, and checks every response against the offline scores of its own request: a lost,
duplicated or swapped result, a wrong score or a failed request makes the exit status 1. Each level stops after
--requests requests or --time-limit-s seconds, whichever comes first.

    python benchmarks/load_test.py                                  # built-in model, clients 1,4,16,64
    python benchmarks/load_test.py --model ./my-reranker --clients 1,16 --requests 64
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prorank_edge.commands.options import model_options  # noqa: E402

LOCAL_SCIFACT = REPO.parent / "shared" / "data" / "beir" / "scifact"
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
TARGET_SHARE_AT_16 = 0.90


def log(message: str) -> None:
    click.echo(f"load_test: {message}", err=True)


def build_workload(data_dir: Path, split: str, queries: int, candidates: int) -> list[dict]:
    """The first `queries` judged queries of the split, each with its BM25 top `candidates` documents."""
    from prorank_edge.evaluation.beir import load_beir
    from prorank_edge.evaluation.bm25 import BM25Retriever

    data = load_beir(data_dir, split)
    qids = list(data.queries)[:queries]
    texts = [data.queries[q] for q in qids]
    doc_ids, _ = BM25Retriever(data.corpus).retrieve(texts, candidates)
    return [{"query": text, "documents": [data.corpus[d].full_text for d in ids]} for text, ids in zip(texts, doc_ids)]


def offline_scores(workload: list[dict], reranker_args: dict) -> tuple[list[np.ndarray], float, dict]:
    """Raw scores of each query's documents in input order, and the offline docs/s (warm-up excluded)."""
    from prorank_edge.reranker import Reranker

    with Reranker(**reranker_args) as reranker:
        first = workload[0]
        reranker.rank(first["query"], first["documents"][:4], show_progress_bar=False)  # warm-up
        scores, elapsed = [], 0.0
        for item in workload:
            started = time.perf_counter()
            ranked = reranker.rank(item["query"], item["documents"], show_progress_bar=False)
            elapsed += time.perf_counter() - started
            row = np.full(len(item["documents"]), np.nan, dtype=np.float64)
            for r in ranked:
                row[r["corpus_id"]] = r["score"]
            scores.append(row)
        info = reranker.describe()
    docs = sum(len(item["documents"]) for item in workload)
    return scores, docs / elapsed, info


class ServerProcess:
    """`prorank-edge serve` on a free loopback port, its log in a temporary file."""

    def __init__(self, serve_args: list[str], start_timeout_s: float):
        self.log_path = Path(tempfile.mkstemp(prefix="prorank-serve-", suffix=".log")[1])
        command = [sys.executable, "-m", "prorank_edge.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                   *serve_args]
        with self.log_path.open("wb") as sink:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        deadline = time.monotonic() + start_timeout_s
        self.port = None
        while self.port is None:
            if self.proc.poll() is not None:
                raise click.ClickException(f"the server exited ({self.proc.returncode}); see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise click.ClickException(f"the server did not start in {start_timeout_s:.0f} s; "
                                           f"see {self.log_path}")
            found = LISTENING.search(self.log_path.read_text(errors="replace"))
            self.port = int(found.group(1)) if found else None
            time.sleep(0.2)
        while True:
            try:
                if self.request("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise click.ClickException(f"/health did not answer in time; see {self.log_path}")
            time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"content-type": "application/json"} if body else {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def metric(self, name: str) -> float:
        status, text = self.request("GET", "/metrics")
        for line in text.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def check_response(status: int, payload: bytes, expected: np.ndarray, tolerance: float) -> dict:
    """Counts of what went wrong with one answer, against its own request's offline scores."""
    outcome = {"failed": 0, "lost": 0, "duplicated": 0, "swapped": 0, "wrong_score": 0, "unsorted": 0,
               "max_abs_diff": 0.0}
    if status != 200:
        outcome["failed"] = 1
        return outcome
    results = json.loads(payload)["results"]
    seen: set[int] = set()
    raw = []
    for r in results:
        i = r["index"]
        raw.append(r["raw_score"])
        if i in seen or not 0 <= i < len(expected):
            outcome["duplicated"] += 1
            continue
        seen.add(i)
        diff = abs(r["raw_score"] - expected[i])
        outcome["max_abs_diff"] = max(outcome["max_abs_diff"], diff)
        if diff > tolerance:
            # Swapped: the score is another document's of this request; else simply wrong.
            others = np.delete(np.arange(len(expected)), i)
            if len(others) and np.min(np.abs(expected[others] - r["raw_score"])) <= tolerance:
                outcome["swapped"] += 1
            else:
                outcome["wrong_score"] += 1
    outcome["lost"] = len(expected) - len(seen)
    outcome["unsorted"] = int(raw != sorted(raw, reverse=True))
    return outcome


def run_level(server: ServerProcess, workload: list[dict], expected: list[np.ndarray], clients: int, requests: int,
              time_limit_s: float, request_timeout_s: float, tolerance: float) -> dict:
    """`requests` requests from `clients` concurrent keep-alive clients; stops early after time_limit_s."""
    bodies = [json.dumps({"query": w["query"], "documents": w["documents"]}).encode() for w in workload]
    lock = threading.Lock()
    next_request = iter(range(requests))
    latencies: list[float] = []
    outcomes: list[dict] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit_s

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=request_timeout_s)
        try:
            while time.monotonic() < deadline:
                with lock:
                    index = next(next_request, None)
                if index is None:
                    return
                which = index % len(workload)
                started = time.perf_counter()
                try:
                    conn.request("POST", "/v1/rerank", body=bodies[which],
                                 headers={"content-type": "application/json"})
                    response = conn.getresponse()
                    status, payload = response.status, response.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()  # reconnects on the next request
                    status, payload = 0, b""
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                elapsed = time.perf_counter() - started
                outcome = check_response(status, payload, expected[which], tolerance)
                outcome["documents"] = len(workload[which]["documents"])
                with lock:
                    latencies.append(elapsed)
                    outcomes.append(outcome)
        finally:
            conn.close()

    scored_before = server.metric("prorank_documents_scored_total")
    batches_before = server.metric("prorank_batch_size_count")
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(time_limit_s + request_timeout_s + 30)
    wall = time.perf_counter() - started
    scored = server.metric("prorank_documents_scored_total") - scored_before
    batches = server.metric("prorank_batch_size_count") - batches_before
    ok = [o for o in outcomes if not o["failed"]]
    docs = sum(o["documents"] for o in ok)
    lat_ms = np.asarray(latencies) * 1000.0
    totals = {k: int(sum(o[k] for o in outcomes)) for k in
              ("failed", "lost", "duplicated", "swapped", "wrong_score", "unsorted")}
    return {
        "clients": clients, "requests": len(outcomes), "requests_planned": requests, "wall_s": wall,
        "requests_per_s": len(ok) / wall, "docs_per_s": docs / wall,
        "p50_ms": float(np.percentile(lat_ms, 50)) if len(lat_ms) else None,
        "p95_ms": float(np.percentile(lat_ms, 95)) if len(lat_ms) else None,
        "p99_ms": float(np.percentile(lat_ms, 99)) if len(lat_ms) else None,
        "server_docs_scored": scored, "server_mean_batch_size": scored / batches if batches else None,
        "max_abs_diff": max((o["max_abs_diff"] for o in ok), default=0.0), **totals,
        "transport_errors": errors[:5], "stopped_by_time_limit": len(outcomes) < requests,
    }


def markdown(report: dict) -> str:
    lines = [
        f"Offline (one `Reranker.rank` per query): {report['offline_docs_per_s']:.2f} docs/s; model "
        f"{report['model']}; {report['candidates']} candidates per request; tolerance {report['tolerance']:g}.",
        "",
        "| clients | requests | req/s | docs/s | share of offline | p50 ms | p95 ms | p99 ms | mean batch | "
        "failed | lost | duplicated | swapped | wrong score |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["levels"]:
        batch = f"{r['server_mean_batch_size']:.1f}" if r["server_mean_batch_size"] else "-"
        lines.append(f"| {r['clients']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['docs_per_s']:.2f} | "
                     f"{r['share_of_offline']:.0%} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | "
                     f"{batch} | {r['failed']} | {r['lost']} | {r['duplicated']} | {r['swapped']} | "
                     f"{r['wrong_score']} |")
    return "\n".join(lines)


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=LOCAL_SCIFACT,
              show_default=True, help="A BEIR dataset folder (SciFact).")
@click.option("--split", default="test", show_default=True)
@click.option("--queries", type=click.IntRange(min=1), default=100, show_default=True,
              help="Distinct queries; request i asks query i mod this.")
@click.option("--candidates", type=click.IntRange(min=1), default=20, show_default=True,
              help="BM25 candidates per request.")
@click.option("--clients", "client_levels", default="1,4,16,64", show_default=True,
              help="Comma-separated concurrent client counts, one level each.")
@click.option("--requests", type=click.IntRange(min=1), default=128, show_default=True,
              help="Requests per level (a fixed count: the level stops when they are answered).")
@click.option("--time-limit-s", type=click.FloatRange(min=1), default=1800, show_default=True,
              help="A level sends no new request after this long.")
@click.option("--request-timeout-s", type=click.FloatRange(min=1), default=600, show_default=True)
@click.option("--start-timeout-s", type=click.FloatRange(min=1), default=900, show_default=True,
              help="How long the server may take to load the model.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Passed to the server.")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=None, help="Passed to the server.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=None,
              help="Largest |server - offline| raw score that counts as equal. Default: 1e-3 in float32, else "
                   "0.05 (bf16/fp16/quantized results move with the batch composition).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report here as JSON (and a .md table beside it).")
@model_options
def load_test(data_dir, split, queries, candidates, client_levels, requests, time_limit_s, request_timeout_s,
              start_timeout_s, max_wait_ms, max_batch_tokens, tolerance, output, model, backend, device, dtype,
              max_length, batch_size, threads):
    """Load-test `prorank-edge serve` on loopback against offline scoring of the same requests."""
    levels = [int(c) for c in client_levels.split(",") if c.strip()]
    if not levels or min(levels) < 1:
        raise click.BadParameter("give positive client counts, e.g. 1,4,16,64", param_hint="--clients")
    log(f"building the workload: {queries} queries of {data_dir.name}/{split}, BM25 top {candidates}")
    workload = build_workload(data_dir, split, queries, candidates)
    reranker_args = dict(model=model, backend=backend, device=device, dtype=dtype, max_length=max_length,
                         batch_size=batch_size, threads=threads)
    log("scoring offline")
    expected, offline_docs_s, info = offline_scores(workload, reranker_args)
    if tolerance is None:
        exact = info.get("backend") == "torch" and info.get("dtype") == "float32"
        tolerance = 1e-3 if exact else 0.05
    log(f"offline: {offline_docs_s:.2f} docs/s ({info})")

    serve_args = ["--backend", backend, "--device", device, "--dtype", dtype, "--batch-size", str(batch_size),
                  "--max-wait-ms", str(max_wait_ms)]
    for flag, value in (("--model", model), ("--max-length", max_length), ("--threads", threads),
                        ("--max-batch-tokens", max_batch_tokens)):
        if value is not None:
            serve_args += [flag, str(value)]
    # Every level's requests are in flight at once at most, so the queue must never turn one away.
    serve_args += ["--max-queue", str(max(256, max(levels))), "--max-documents", str(max(1000, candidates))]
    log("starting the server")
    server = ServerProcess(serve_args, start_timeout_s)
    try:
        warm = json.dumps({"query": workload[0]["query"], "documents": workload[0]["documents"]}).encode()
        server.request("POST", "/v1/rerank", warm, timeout=request_timeout_s)
        results = []
        for clients in levels:
            log(f"{clients} client(s), {requests} requests")
            level = run_level(server, workload, expected, clients, requests, time_limit_s, request_timeout_s,
                              tolerance)
            level["share_of_offline"] = level["docs_per_s"] / offline_docs_s
            log(f"{clients} client(s): {level['requests_per_s']:.2f} req/s, {level['docs_per_s']:.2f} docs/s "
                f"({level['share_of_offline']:.0%} of offline), p50 {level['p50_ms']:.0f} ms")
            results.append(level)
    finally:
        server.stop()
    report = {"model": model or "built-in default", "describe": info, "data": str(data_dir), "split": split,
              "queries": len(workload), "candidates": candidates, "tolerance": tolerance,
              "offline_docs_per_s": offline_docs_s, "levels": results, "command": sys.argv,
              "target": f"share of offline >= {TARGET_SHARE_AT_16:.0%} at 16 clients"}
    at16 = next((r for r in results if r["clients"] == 16), None)
    report["target_met"] = None if at16 is None else at16["share_of_offline"] >= TARGET_SHARE_AT_16
    table = markdown(report)
    click.echo(table)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        output.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
    bad = sum(r[k] for r in results for k in ("failed", "lost", "duplicated", "swapped", "wrong_score", "unsorted"))
    if bad:
        log(f"FAILED: {bad} lost, duplicated, swapped, mis-scored, unsorted or failed results")
        sys.exit(1)
    log("every response matched the offline scores of its own request")


if __name__ == "__main__":
    load_test(prog_name="load_test.py")
