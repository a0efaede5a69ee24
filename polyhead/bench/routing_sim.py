"""The discrete-event simulation behind `polyhead bench routing`: requests arrive at the router, the
policy under test ranks the replicas (ReplicaViews built from the replicas' live queue lengths, as Ray's
queue-length probes see them, and from whatever the policy itself remembers), the request goes to the
first group's least-loaded replica that accepts (under max_ongoing), and the replicas step on their own
clocks. Every `report_period_s` each replica reports its cached block hashes and resident adapters,
as Ray's routing stats do. When no replica has room the request waits at the router, first come first
served, until one finishes something.
"""

import heapq
import random
from collections import deque
from dataclasses import dataclass

from polyhead.bench.report import percentile
from polyhead.bench.routing_calibration import StepTimeModel
from polyhead.bench.routing_replica import ReplicaConfig, SimReplica
from polyhead.bench.routing_workload import SimRequest
from polyhead.deploy.routing import ReplicaView

_ARRIVE, _STEP_END, _WAKE, _REPORT = range(4)  # event kinds; at equal times steps end before arrivals
WARMUP_FRACTION = 0.1  # the first 10% of arrivals warm the caches and are left out of the figures


@dataclass(slots=True)
class SimResult:
    """One policy at one fleet size: the figures of the table."""

    policy: str
    num_replicas: int
    num_requests: int  # measured (after the warm-up)
    num_finished: int  # all requests, warm-up included: must equal all submitted
    prefix_hit_rate: float  # cached prompt tokens / prompt tokens
    adapter_loads: int
    ttft_p50_s: float
    ttft_p99_s: float
    goodput: float  # measured requests with TTFT <= slo_s, per second of their arrival window
    utilization: float  # the fraction of replica time spent in steps
    slo_s: float

    def row(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


class Simulation:
    def __init__(self, requests: list[SimRequest], policy, num_replicas: int, config: ReplicaConfig,
                 model: StepTimeModel, seed: int = 0, report_period_s: float = 1.0):
        self.requests, self.policy, self.config = requests, policy, config
        self.replicas = [SimReplica(i, config, model) for i in range(num_replicas)]
        self._by_id = {r.replica_id: r for r in self.replicas}
        self.rng = random.Random(seed)
        self.report_period_s = report_period_s
        self.pending: deque[SimRequest] = deque()
        self.events: list[tuple[float, int, int, int]] = []
        self._seq = 0
        self._wake_at: dict[int, float] = {}
        self._busy_s = 0.0
        self.policy.block_size = config.block_size

    def _push(self, at: float, kind: int, index: int) -> None:
        self._seq += 1
        heapq.heappush(self.events, (at, kind, self._seq, index))

    def run(self) -> float:
        """Play every request to its end; the time the last one finished."""
        for i, request in enumerate(self.requests):
            self._push(request.arrival_s, _ARRIVE, i)
        self._push(self.report_period_s, _REPORT, 0)
        num_left, now = len(self.requests), 0.0
        while num_left:
            now, kind, _, index = heapq.heappop(self.events)
            if kind == _ARRIVE:
                if self.pending or not self._route(self.requests[index], now):
                    self.pending.append(self.requests[index])
            elif kind == _STEP_END:
                replica = self.replicas[index]
                done = replica.finish_step(now)
                num_left -= len(done)
                self._kick(replica, now)
                while done and self.pending and self._route(self.pending[0], now):
                    self.pending.popleft()
            elif kind == _WAKE:
                self._wake_at.pop(index, None)
                self._kick(self.replicas[index], now)
            else:
                for replica in self.replicas:
                    self.policy.on_report(replica.replica_id, *replica.report(), now)
                self._push(now + self.report_period_s, _REPORT, 0)
        return now

    def _views(self) -> list[ReplicaView]:
        return [ReplicaView(r.replica_id, r.num_ongoing, self.config.max_ongoing,
                            *self.policy.view_fields(r.replica_id), r.num_queued_tokens) for r in self.replicas]

    def _route(self, request: SimRequest, now: float) -> bool:
        """Send the request where the policy says; False when every replica is at max_ongoing."""
        views = self._views()
        chosen = None
        for group in self.policy.rank(request, views, self.rng):
            open_ = [v for v in group if not v.is_full]
            if open_:
                chosen = min(open_, key=lambda v: v.num_ongoing)
                break
        if chosen is None:  # Ray backs off and asks again until one accepts: in effect, any with room
            open_ = [v for v in views if not v.is_full]
            if not open_:
                return False
            chosen = min(open_, key=lambda v: v.num_ongoing)
        replica = self._by_id[chosen.replica_id]
        replica.submit(request)
        self.policy.on_routed(request, replica.replica_id, now)
        self._kick(replica, now)
        return True

    def _kick(self, replica: SimReplica, now: float) -> None:
        if replica.is_stepping:
            return
        duration = replica.start_step(now)
        if duration is not None:
            self._busy_s += duration
            self._push(now + duration, _STEP_END, replica.index)
            return
        wake = replica.next_wake()
        if wake is not None and self._wake_at.get(replica.index, float("inf")) > wake:
            self._wake_at[replica.index] = wake
            self._push(wake, _WAKE, replica.index)

    def result(self, end_s: float, slo_s: float) -> SimResult:
        measured = self.requests[int(len(self.requests) * WARMUP_FRACTION):]
        ttfts = [r.ttft_s for r in measured]
        window = max(measured[-1].arrival_s - measured[0].arrival_s, 1e-9) if measured else 1.0
        prompt = sum(r.num_prompt_tokens for r in measured)
        return SimResult(
            policy=self.policy.name, num_replicas=len(self.replicas), num_requests=len(measured),
            num_finished=sum(r.finish_s is not None for r in self.requests),
            prefix_hit_rate=sum(r.num_cached_tokens for r in measured) / max(prompt, 1),
            adapter_loads=sum(r.num_adapter_loads for r in self.replicas),
            ttft_p50_s=percentile(ttfts, 50) or 0.0, ttft_p99_s=percentile(ttfts, 99) or 0.0,
            goodput=sum(t <= slo_s for t in ttfts) / window,
            utilization=self._busy_s / (len(self.replicas) * max(end_s, 1e-9)), slo_s=slo_s)


def simulate(requests: list[SimRequest], policy, num_replicas: int, config: ReplicaConfig, model: StepTimeModel,
             seed: int = 0, slo_s: float = 2.0, report_period_s: float = 1.0) -> SimResult:
    sim = Simulation(requests, policy, num_replicas, config, model, seed, report_period_s)
    return sim.result(sim.run(), slo_s)
