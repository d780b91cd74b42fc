"""Prometheus metrics of the server (names follow vLLM's where one exists), in a registry per app."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LAT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, m = self.registry, ["model"]
        self.ttft = Histogram("mai_time_to_first_token_seconds", "Time to first token", m, buckets=_LAT,
                              registry=r)
        self.itl = Histogram("mai_inter_token_latency_seconds", "Time between streamed tokens", m,
                             buckets=_LAT, registry=r)
        self.e2e = Histogram("mai_e2e_request_latency_seconds", "Request latency", m, buckets=_LAT,
                             registry=r)
        self.queue = Histogram("mai_request_queue_time_seconds", "Time waiting before the first step", m,
                               buckets=_LAT, registry=r)
        self.prompt_tokens = Counter("mai_prompt_tokens", "Prompt tokens processed", m, registry=r)
        self.generation_tokens = Counter("mai_generation_tokens", "Tokens generated", m, registry=r)
        self.requests = Counter("mai_requests", "Finished requests", ["model", "finish_reason"], registry=r)
        self.running = Gauge("mai_num_requests_running", "Requests in the running batch", m, registry=r)
        self.waiting = Gauge("mai_num_requests_waiting", "Requests queued", m, registry=r)

    def watch(self, model: str, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        """Read the engine's queue sizes at scrape time."""
        self.running.labels(model).set_function(running)
        self.waiting.labels(model).set_function(waiting)
