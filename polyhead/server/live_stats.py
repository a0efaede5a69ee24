"""GET /stats: the live figures the web dashboard charts every second, as one JSON object.

/metrics holds running totals and coarse histograms, built for Prometheus to difference over
minutes; a page polling once a second needs rates and percentiles over the last few seconds
instead. So the same two hooks that feed /metrics (each engine step, each finished request) also
append to short rolling windows here, and a request for /stats reads them: rates over the last
RATE_WINDOW_S seconds, latency percentiles over the last LATENCY_WINDOW_S seconds. The schema is
in docs/web.md.
"""

import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request

RATE_WINDOW_S = 5.0  # tokens/s, rows per step, mixed share, prefix hits: over this many seconds
LATENCY_WINDOW_S = 60.0  # TTFT / TPOT percentiles: over the requests that finished this recently
ROW_KINDS = ("generate", "classify", "tag", "embed", "score")

router = APIRouter()


@dataclass(slots=True)
class StepSample:
    at: float  # monotonic seconds when the step was reported
    num_tokens: int  # tokens the step computed (prefill chunks and decodes)
    rows: dict[str, int]  # kind -> rows of that kind in the step
    num_prefix_hit_tokens: int  # the backbone's running total of prompt tokens served from its prefix cache


@dataclass(slots=True)
class RequestSample:
    at: float  # monotonic seconds when the request finished
    ttft: float | None  # seconds to its first token; None for pooling requests
    tpot: float | None  # seconds per output token after the first; None with fewer than two tokens
    num_tokens: int  # output tokens


class LiveStats:
    """Rolling windows of steps (per backbone) and finished requests (per task). Steps arrive on the
    engines' threads and snapshots are read on the event loop, hence the lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._steps: dict[str, deque[StepSample]] = defaultdict(deque)
        self._requests: dict[str, deque[RequestSample]] = defaultdict(deque)

    def record_step(self, backbone: str, num_tokens: int, rows: dict[str, int], num_prefix_hit_tokens: int) -> None:
        now = self.clock()
        with self._lock:
            steps = self._steps[backbone]
            steps.append(StepSample(now, num_tokens, dict(rows), num_prefix_hit_tokens))
            _drop_older(steps, now - RATE_WINDOW_S)

    def record_request(self, task: str, ttft: float | None, tpot: float | None, num_tokens: int) -> None:
        now = self.clock()
        with self._lock:
            requests = self._requests[task]
            requests.append(RequestSample(now, ttft, tpot, num_tokens))
            _drop_older(requests, now - LATENCY_WINDOW_S)

    def snapshot(self, registry) -> dict:
        """The /stats body. registry: the TaskRegistry, for each backbone's gauges."""
        now = self.clock()
        with self._lock:
            for window, horizon in ((self._steps, RATE_WINDOW_S), (self._requests, LATENCY_WINDOW_S)):
                for samples in window.values():
                    _drop_older(samples, now - horizon)
            steps = {name: list(samples) for name, samples in self._steps.items()}
            requests = {task: list(samples) for task, samples in self._requests.items()}
        backbones = {name: _backbone_figures(backbone, steps.get(name, [])) for name, backbone
                     in registry.backbones.items()}
        tasks = {task: _task_figures(samples, now) for task, samples in sorted(requests.items()) if samples}
        return {"rate_window_s": RATE_WINDOW_S, "latency_window_s": LATENCY_WINDOW_S, "backbones": backbones,
                "tasks": tasks, "output_tokens_per_s": sum(t["output_tokens_per_s"] for t in tasks.values())}


def _drop_older(samples: deque, horizon: float) -> None:
    while samples and samples[0].at < horizon:
        samples.popleft()


def _backbone_figures(backbone, steps: list[StepSample]) -> dict:
    engine = backbone.engine
    stats = engine.stats()  # an encoder has neither scheduler nor KV cache: zeros
    num_steps = len(steps)
    num_tokens = sum(step.num_tokens for step in steps)
    # the first sample's total is the baseline: hits within the window are the totals' difference
    num_hits = steps[-1].num_prefix_hit_tokens - steps[0].num_prefix_hit_tokens if num_steps > 1 else 0
    rows = {kind: sum(step.rows.get(kind, 0) for step in steps) / num_steps if num_steps else 0.0
            for kind in ROW_KINDS}
    num_mixed = sum(1 for step in steps if step.rows.get("generate")
                    and any(count for kind, count in step.rows.items() if kind != "generate"))
    return {
        "status": "restarting" if engine.is_restarting else ("running" if engine.is_running else "dead"),
        "generative": backbone.is_generative,
        "tokens_per_s": num_tokens / RATE_WINDOW_S,  # computed: prefill and decode
        "steps_per_s": num_steps / RATE_WINDOW_S,
        "running": stats.num_running,
        "waiting": engine.num_queued,
        "kv_cache_usage": stats.kv_usage,
        # of the tokens the window needed, the share the prefix cache served instead of computing
        "prefix_hit_rate": num_hits / (num_hits + num_tokens) if num_hits + num_tokens else 0.0,
        "rows_per_step": rows,  # kind -> mean rows per step over the window
        "mixed_step_share": num_mixed / num_steps if num_steps else 0.0,
        "restarts": engine.num_restarts,
    }


def _task_figures(samples: list[RequestSample], now: float) -> dict:
    ttfts = sorted(s.ttft for s in samples if s.ttft is not None)
    tpots = sorted(s.tpot for s in samples if s.tpot is not None)
    recent = [s for s in samples if s.at >= now - RATE_WINDOW_S]
    return {"requests": len(samples), "ttft_p50": percentile(ttfts, 50), "ttft_p99": percentile(ttfts, 99),
            "tpot_p50": percentile(tpots, 50), "tpot_p99": percentile(tpots, 99),
            "output_tokens_per_s": sum(s.num_tokens for s in recent) / RATE_WINDOW_S}


def percentile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank q-th percentile of an ascending list; None when it is empty."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@router.get("/stats")
async def stats(request: Request):
    state = request.app.state.server
    return state.metrics.live.snapshot(state.registry)
