"""polyhead's Ray Serve RequestRouter: it scores replicas with routing.py's policy.

Ray calls `choose_replicas` in the process that holds the DeploymentHandle (the ingress) with the
request's arguments, a tokenized PreparedRequest, so the router hashes its first KV blocks exactly as
the engine does (engine/core/block_hash.py) and asks the policy for candidate groups; Ray then takes
the least-loaded replica of the first group that accepts. What each replica holds comes from its
routing stats (replica.py, every `request_routing_stats_period_s`), merged with where this router sent
prompts since (PrefixIndex): a burst of one system prompt finds the replica the first one went to
before the next report. A fan-out request (`after`: it shares its leader's prompt) goes where its
leader went, so the prompt is prefilled once. The latest report of every replica is kept here too,
per deployment, for the ingress's /metrics and stats (reports.py).
"""

import random
import time
from collections import OrderedDict

from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.replica_wrapper import RunningReplica
from ray.serve._private.request_router.request_router import (
    FIFOMixin,
    LocalityMixin,
    MultiplexMixin,
    RequestRouter,
)

from polyhead.deploy import reports
from polyhead.deploy.routing import (
    ROUTED_BLOCKS,
    CacheAwarePolicy,
    PrefixIndex,
    ReplicaView,
    RouteRequest,
    power_of_two,
)
from polyhead.engine.core.block_hash import block_hashes
from polyhead.engine.core.outputs import EngineStats
from polyhead.engine.core.request import PreparedRequest

MAX_REMEMBERED_LEADERS = 4096  # fan-out leaders whose replica is remembered (their followers come within ms)


class PolyheadRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    def initialize_state(self, policy: str = "polyhead", imbalance_threshold: int = 16):
        """policy: polyhead (prefix, adapter and load) or pow2 (load alone, Ray's default procedure)."""
        if policy not in ("polyhead", "pow2"):
            raise ValueError(f"routing policy must be polyhead or pow2, got {policy!r}")
        self._policy = CacheAwarePolicy(imbalance_threshold=imbalance_threshold) if policy == "polyhead" else None
        self._index = PrefixIndex()
        self._leaders: OrderedDict[str, str] = OrderedDict()  # req_id -> replica id it went to
        self._seen_stats: dict[str, int] = {}  # replica id -> the number of its report last merged
        self._rng = random.Random()
        self._reports = reports.REPORTS.setdefault(self._deployment_id.name if self._deployment_id else "", {})

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        self._take_reports(candidate_replicas)
        prepared = _prepared(pending_request)
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        views = [self._view(r) for r in candidate_replicas]
        if prepared is None or self._policy is None:  # a describe() call, or plain power-of-two
            return [[by_id[v.replica_id] for v in power_of_two(views, self._rng)]]
        leader = self._leaders.get(prepared.routing.after) if prepared.routing.after else None
        if leader in by_id:
            return [[by_id[leader]], [r for r in candidate_replicas if r.replica_id.unique_id != leader]]
        request = self._route_request(prepared)
        groups = self._policy.rank(request, views, self._rng)
        if not groups:
            return []
        # The first group's least-loaded replica is where it goes (unless that one refuses it, which
        # Ray's default non-strict mode never reports back): remember it now, not on a callback.
        chosen = min(groups[0], key=lambda view: view.num_ongoing)
        self._remember(prepared, request, chosen.replica_id)
        rest = [view for group in groups for view in group if view is not chosen]
        return [[by_id[chosen.replica_id]], [by_id[view.replica_id] for view in rest]]

    def _remember(self, prepared: PreparedRequest, request: RouteRequest, replica_id: str) -> None:
        self._leaders[prepared.req_id] = replica_id
        if len(self._leaders) > MAX_REMEMBERED_LEADERS:
            self._leaders.popitem(last=False)
        if request.prefix_hashes:
            self._index.record_routed(replica_id, request.prefix_hashes, time.monotonic())

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        """Ray's news of the replicas (who runs, and their routing stats): taken in even while idle."""
        super().update_replicas(replicas)
        if hasattr(self, "_reports"):  # Ray may call this before initialize_state
            self._take_reports(replicas)

    def on_replica_actor_died(self, replica_id) -> None:
        super().on_replica_actor_died(replica_id)
        self._index.forget(replica_id.unique_id)
        self._reports.pop(replica_id.unique_id, None)

    # --- what the router knows of a replica ---------------------------------------------------------
    def _take_reports(self, replicas: list[RunningReplica]) -> None:
        """Merge each replica's routing stats once per report."""
        live = {r.replica_id.unique_id for r in self.curr_replicas.values()}
        for gone in set(self._reports) - live:
            del self._reports[gone]
        for replica in replicas:
            stats = replica.routing_stats
            replica_id = replica.replica_id.unique_id
            if not stats or self._seen_stats.get(replica_id) == stats["seq"]:
                continue
            self._seen_stats[replica_id] = stats["seq"]
            self._index.update_reported(replica_id, stats.get("cached_block_hashes", ()), time.monotonic())
            self._reports[replica_id] = reports.ReplicaReport(
                EngineStats(**stats["stats"]), stats["num_in_flight"], stats["num_queued"], stats["num_queued_tokens"],
                stats["num_restarts"], stats["resident_adapters"], stats["pid"], time.monotonic())

    def _view(self, replica: RunningReplica) -> ReplicaView:
        replica_id = replica.replica_id.unique_id
        stats = replica.routing_stats or {}
        ongoing = self._replica_queue_len_cache.get(replica.replica_id)
        if ongoing is None:  # not counted here lately: its own last report
            report = self._reports.get(replica_id)
            ongoing = report.num_in_flight if report else 0
        return ReplicaView(replica_id, ongoing, replica.max_ongoing_requests, self._index.cached_for(replica_id),
                           stats.get("resident_adapters", ()), stats.get("num_queued_tokens", 0))

    def _block_size(self) -> int:
        for replica in self.curr_replicas.values():
            if replica.routing_stats and replica.routing_stats.get("block_size"):
                return replica.routing_stats["block_size"]
        return 0

    def _route_request(self, prepared: PreparedRequest) -> RouteRequest:
        block_size = self._block_size()
        adapter = prepared.routing.adapter
        hashes = block_hashes(prepared.token_ids, block_size, adapter, ROUTED_BLOCKS) if block_size else []
        return RouteRequest(hashes, prepared.num_prompt_tokens, prepared.routing.adapter, block_size)


def _prepared(pending_request: PendingRequest | None) -> PreparedRequest | None:
    if pending_request is None or not pending_request.args:
        return None
    first = pending_request.args[0]
    return first if isinstance(first, PreparedRequest) else None
