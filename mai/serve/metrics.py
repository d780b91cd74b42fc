"""Prometheus metrics of the server (names follow vLLM's where one exists), in a registry per app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
        self.engine_gauges = {  # EngineStats field → gauge (mai.infer.engine.Engine.stats)
            "total_blocks": Gauge("mai_kv_cache_blocks_total", "KV cache blocks of 16 tokens", m, registry=r),
            "free_blocks": Gauge("mai_kv_cache_blocks_free", "KV cache blocks free or evictable", m,
                                 registry=r),
            "prefix_queried_tokens": Gauge("mai_prefix_cache_queries_tokens",
                                           "Prompt tokens looked up in the prefix cache", m, registry=r),
            "prefix_hit_tokens": Gauge("mai_prefix_cache_hits_tokens", "Prompt tokens served from the prefix "
                                       "cache", m, registry=r),
            "preemptions": Gauge("mai_num_preemptions", "Requests preempted for want of KV blocks", m,
                                 registry=r),
            "draft_tokens": Gauge("mai_spec_decode_num_draft_tokens", "Speculative tokens proposed", m,
                                  registry=r),
            "compiled_steps": Gauge("mai_compiled_decode_steps", "Engine steps run as compiled graphs", m,
                                    registry=r),
            "accepted_tokens": Gauge("mai_spec_decode_num_accepted_tokens", "Speculative tokens accepted", m,
                                     registry=r),
            "mixed_adapter_steps": Gauge("mai_lora_mixed_steps", "Engine steps that served more than one "
                                         "LoRA adapter (the base model counts as one)", m, registry=r),
        }

    def watch(self, model: str, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        """Read the engine's queue sizes at scrape time."""
        self.running.labels(model).set_function(running)
        self.waiting.labels(model).set_function(waiting)

    def watch_engine(self, model: str, stats: Callable[[], Any]) -> None:
        """Read the engine's pool, prefix-cache, preemption and speculative counts (``Engine.stats``) at
        scrape time."""
        for name, gauge in self.engine_gauges.items():
            gauge.labels(model).set_function(lambda name=name: getattr(stats(), name))
