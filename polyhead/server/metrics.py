"""Prometheus metrics, one registry per app (so several apps in one process do not collide).

Request counts and latencies carry the task (`chat`/`completion` for the bare model); engine
figures carry the backbone, since each backbone has its own engine loop and KV cache. Per step:
tokens, rows by kind (generate | classify | tag | embed | score), and whether the step mixed
generate and pooling rows in one forward pass.
"""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from polyhead.server.live_stats import LiveStats

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, tasks):
        """tasks: the TaskRegistry, whose backbones' engines are watched."""
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("polyhead_requests", "Finished requests", ["task", "status"], registry=registry)
        self.rejected = Counter("polyhead_rejected", "Requests turned away", ["reason"], registry=registry)
        self.generated_tokens = Counter("polyhead_generated_tokens", "Output tokens", ["task"], registry=registry)
        self.ttft = Histogram("polyhead_time_to_first_token_seconds", "Time to first token", ["task"],
                              buckets=_LATENCY_BUCKETS, registry=registry)
        self.tpot = Histogram("polyhead_time_per_output_token_seconds", "Time per output token after the first",
                              ["task"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.e2e = Histogram("polyhead_e2e_latency_seconds", "Request latency", ["task"], buckets=_LATENCY_BUCKETS,
                             registry=registry)
        self.batch_tokens = Histogram("polyhead_batch_tokens", "Tokens computed per engine step", ["backbone"],
                                      buckets=_TOKEN_BUCKETS, registry=registry)
        self.batch_rows = Histogram("polyhead_batch_rows", "Rows of one kind in an engine step (steps that had any)",
                                    ["kind"], buckets=_ROW_BUCKETS, registry=registry)
        self.mixed_steps = Counter("polyhead_mixed_steps", "Engine steps that carried generate and pooling rows "
                                   "together", ["backbone"], registry=registry)
        self.live = LiveStats()  # the same observations in short rolling windows, for GET /stats
        registry.register(_EngineCollector(tasks))
        for name, backbone in tasks.backbones.items():
            backbone.engine.on_step = self._step_observer(name, backbone.engine)

    def record(self, task: str, status: str, ttft: float | None, e2e: float, num_tokens: int) -> None:
        self.requests.labels(task=task, status=status).inc()
        self.e2e.labels(task=task).observe(e2e)
        if num_tokens:
            self.generated_tokens.labels(task=task).inc(num_tokens)
        tpot = (e2e - ttft) / (num_tokens - 1) if ttft is not None and num_tokens > 1 else None
        if ttft is not None:
            self.ttft.labels(task=task).observe(ttft)
        if tpot is not None:
            self.tpot.labels(task=task).observe(tpot)
        self.live.record_request(task, ttft, tpot, num_tokens)

    def _step_observer(self, backbone: str, engine):
        tokens = self.batch_tokens.labels(backbone=backbone)
        mixed = self.mixed_steps.labels(backbone=backbone)

        def observe(num_tokens: int) -> None:  # on the engine's thread, after each step
            tokens.observe(num_tokens)
            stats = engine.stats()
            rows = stats.last_step_rows
            self.live.record_step(backbone, num_tokens, rows, stats.num_prefix_hit_tokens)
            for kind, count in rows.items():
                if count:
                    self.batch_rows.labels(kind=kind).observe(count)
            if rows.get("generate") and any(count for kind, count in rows.items() if kind != "generate"):
                mixed.inc()

        return observe

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """Figures the engines keep themselves, read at scrape time (in process mode: as of the child's last report)."""

    def __init__(self, tasks):
        self.tasks = tasks

    def collect(self):
        families = {
            "queue": GaugeMetricFamily("polyhead_queue_waiting", "Requests waiting for their first token",
                                       labels=["backbone"]),
            "running": GaugeMetricFamily("polyhead_running_sequences", "Sequences the scheduler is running",
                                         labels=["backbone"]),
            "kv": GaugeMetricFamily("polyhead_kv_cache_usage_ratio", "Share of KV blocks in use", labels=["backbone"]),
            "hits": CounterMetricFamily("polyhead_prefix_cache_hit_tokens", "Prompt tokens served from the prefix "
                                        "cache", labels=["backbone"]),
            "preempted": CounterMetricFamily("polyhead_preemptions", "Sequences preempted for lack of KV blocks",
                                             labels=["backbone"]),
            "restarts": CounterMetricFamily("polyhead_engine_restarts", "Dead engines replaced by a new one",
                                            labels=["backbone"]),
            # on Ray Serve (polyhead/deploy): every replica's own, as of its last routing-stats report
            "replica_info": GaugeMetricFamily("polyhead_replica_info", "A live replica (1), its process and "
                                              "engine restarts", labels=["backbone", "replica", "pid"]),
            "replica_unfinished": GaugeMetricFamily("polyhead_replica_unfinished_requests", "Requests a replica "
                                                    "holds, waiting or running", labels=["backbone", "replica"]),
            "replica_kv": GaugeMetricFamily("polyhead_replica_kv_cache_usage_ratio", "Share of a replica's KV "
                                            "blocks in use", labels=["backbone", "replica"]),
            "replica_adapters": GaugeMetricFamily("polyhead_replica_resident_adapters", "LoRA adapters whose "
                                                  "weights a replica holds", labels=["backbone", "replica"]),
            "replica_hits": CounterMetricFamily("polyhead_replica_prefix_cache_hit_tokens", "Prompt tokens a "
                                                "replica served from its prefix cache", labels=["backbone", "replica"]),
        }
        for name, backbone in self.tasks.backbones.items():
            stats = backbone.engine.stats()  # an encoder has neither scheduler nor KV cache: zeros
            families["queue"].add_metric([name], backbone.engine.num_queued)
            families["running"].add_metric([name], stats.num_running)
            families["kv"].add_metric([name], stats.kv_usage)
            families["hits"].add_metric([name], stats.num_prefix_hit_tokens)
            families["preempted"].add_metric([name], stats.num_preemptions)
            families["restarts"].add_metric([name], backbone.engine.num_restarts)
            for replica, report in backbone.engine.replica_reports().items():
                families["replica_info"].add_metric([name, replica, str(report.pid)], 1)
                families["replica_unfinished"].add_metric([name, replica], report.stats.num_unfinished)
                families["replica_kv"].add_metric([name, replica], report.stats.kv_usage)
                families["replica_hits"].add_metric([name, replica], report.stats.num_prefix_hit_tokens)
                families["replica_adapters"].add_metric([name, replica], len(report.resident_adapters))
        yield from families.values()
