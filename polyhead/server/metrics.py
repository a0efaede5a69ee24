"""Prometheus metrics, one registry per app (so several apps in one process do not collide)."""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from polyhead.engine.engine_client import EngineClient

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    def __init__(self, engine: EngineClient):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("polyhead_requests", "Finished requests", ["task", "status"], registry=registry)
        self.rejected = Counter("polyhead_rejected", "Requests turned away", ["reason"], registry=registry)
        self.generated_tokens = Counter("polyhead_generated_tokens", "Output tokens", registry=registry)
        self.ttft = Histogram("polyhead_time_to_first_token_seconds", "Time to first token",
                              buckets=_LATENCY_BUCKETS, registry=registry)
        self.tpot = Histogram("polyhead_time_per_output_token_seconds", "Time per output token after the first",
                              buckets=_LATENCY_BUCKETS, registry=registry)
        self.e2e = Histogram("polyhead_e2e_latency_seconds", "Request latency", buckets=_LATENCY_BUCKETS,
                             registry=registry)
        self.batch_tokens = Histogram("polyhead_batch_tokens", "Tokens computed per engine step",
                                      buckets=_TOKEN_BUCKETS, registry=registry)
        registry.register(_EngineCollector(engine))
        engine.on_step = self.batch_tokens.observe

    def record(self, task: str, status: str, ttft: float | None, e2e: float, num_tokens: int) -> None:
        self.requests.labels(task=task, status=status).inc()
        self.e2e.observe(e2e)
        self.generated_tokens.inc(num_tokens)
        if ttft is not None:
            self.ttft.observe(ttft)
            if num_tokens > 1:
                self.tpot.observe((e2e - ttft) / (num_tokens - 1))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """Figures the engine keeps itself, read at scrape time (in process mode: as of the child's last report)."""

    def __init__(self, engine: EngineClient):
        self.engine = engine

    def collect(self):
        stats = self.engine.stats()
        yield GaugeMetricFamily("polyhead_queue_waiting", "Requests waiting for their first token",
                                value=self.engine.num_queued)
        yield GaugeMetricFamily("polyhead_running_sequences", "Sequences the scheduler is running",
                                value=stats.num_running)
        yield GaugeMetricFamily("polyhead_kv_cache_usage_ratio", "Share of KV blocks in use", value=stats.kv_usage)
        yield CounterMetricFamily("polyhead_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache",
                                  value=stats.num_prefix_hit_tokens)
        yield CounterMetricFamily("polyhead_preemptions", "Sequences preempted for lack of KV blocks",
                                  value=stats.num_preemptions)
