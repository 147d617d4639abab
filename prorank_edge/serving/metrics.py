"""Prometheus metrics of the server, in a registry of its own (so two apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Batches hold 1 to a few hundred prompts; request latencies span milliseconds (a few short documents on a GPU)
# to tens of seconds (a thousand long ones on a CPU).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BATCH_TOKEN_BUCKETS = tuple(2 ** k for k in range(8, 20))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    """Requests, documents scored and dropped, batch sizes, queue depth and latency."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("prorank_requests", "HTTP requests answered, by route and status code.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("prorank_request_duration_seconds",
                                 "Seconds from a request's arrival to its response, by route.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.documents_scored = Counter("prorank_documents_scored", "Documents scored by the model.", registry=r)
        self.documents_dropped = Counter(
            "prorank_documents_dropped", "Queued documents dropped unscored because their client disconnected.",
            registry=r)
        self.batch_size = Histogram("prorank_batch_size", "Documents per forward pass.", buckets=BATCH_SIZE_BUCKETS,
                                    registry=r)
        self.batch_tokens = Histogram("prorank_batch_tokens",
                                      "Padded tokens per forward pass (documents x longest prompt).",
                                      buckets=BATCH_TOKEN_BUCKETS, registry=r)
        self.batch_seconds = Histogram("prorank_batch_duration_seconds", "Seconds per forward pass.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_requests = Gauge("prorank_queue_requests", "Requests queued or being scored.", registry=r)
        self.queue_documents = Gauge("prorank_queue_documents", "Documents queued or being scored, not yet scored.",
                                     registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
