"""The routing policies the simulation compares, each behind one interface: `rank` returns candidate
groups the way Ray Serve's choose_replicas does (the router takes the first group's least-loaded replica
that accepts), `on_routed` and `on_report` keep what the policy remembers.

- round-robin: the next replica in turn.
- power-of-two: two replicas at random, the less loaded wins (Ray Serve's default router).
- ray-prefix: Ray Serve LLM's PrefixCacheAffinityRouter, its algorithm step for step, on Ray's own
  PrefixTree over the prompt's text (one character per token id) and with Ray's multiplex routing for
  LoRA adapters (the replicas that report the adapter loaded, else those with the fewest loaded).
- polyhead: CacheAwarePolicy.rank, the code the Ray router calls, over a PrefixIndex.
"""

import math
import random
from collections.abc import Sequence

from polyhead.bench.routing_workload import SimRequest
from polyhead.deploy.routing import CacheAwarePolicy, PrefixIndex, ReplicaView, RouteRequest, power_of_two

POLICIES = ("round-robin", "power-of-two", "ray-prefix", "ray-prefix-t16", "polyhead")


class RoundRobin:
    name = "round-robin"

    block_size = 16  # the replicas' EngineConfig.block_size (the simulation sets it)

    def __init__(self):
        self._next = 0

    def view_fields(self, replica_id: str) -> tuple:
        """The cached prefixes and resident adapters a ReplicaView shows (what this policy tracks)."""
        return frozenset(), frozenset()

    def rank(self, request: SimRequest, views: Sequence[ReplicaView], rng: random.Random) -> list[list[ReplicaView]]:
        chosen = views[self._next % len(views)]
        self._next += 1
        return [[chosen], sorted(views, key=lambda v: v.num_ongoing)]

    def on_routed(self, request: SimRequest, replica_id: str, now: float) -> None:
        pass

    def on_report(self, replica_id: str, hashes: set[int], adapters: set[str], now: float) -> None:
        pass


class PowerOfTwo(RoundRobin):
    name = "power-of-two"

    def rank(self, request, views, rng):
        return [power_of_two(views, rng)]


def prompt_text(token_ids: list[int]) -> str:
    """The prompt as text for Ray's character-level prefix tree: one character per token id."""
    return "".join(map(chr, (0x10000 + t for t in token_ids)))


class RayPrefixAffinity(RoundRobin):
    """PrefixCacheAffinityRouter.choose_replicas (ray 2.60, ray/llm/_internal/serve/routing_policies/
    prefix_aware/prefix_aware_router.py). Its default imbalanced_threshold is inf: load is never looked at
    once a prefix matches; `ray-prefix-t16` runs it with polyhead's threshold (16) instead."""

    def __init__(self, imbalanced_threshold: float = math.inf, match_rate_threshold: float = 0.1):
        from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import PrefixTree

        super().__init__()
        self.name = "ray-prefix" if math.isinf(imbalanced_threshold) else f"ray-prefix-t{imbalanced_threshold:g}"
        self.imbalanced_threshold = imbalanced_threshold
        self.match_rate_threshold = match_rate_threshold
        self.tree = PrefixTree()
        self._tenants_added = False
        self._adapters: dict[str, set[str]] = {}  # replica -> its multiplexed model ids, as last reported

    def _multiplex_candidates(self, request: SimRequest, views: Sequence[ReplicaView]) -> list[ReplicaView]:
        """MultiplexMixin.apply_multiplex_routing on a first try: replicas with the model id, else the ones
        with the fewest models; a base-model request (no model id) may go anywhere (locality routing)."""
        if request.adapter is None:
            return list(views)
        having = [v for v in views if request.adapter in self._adapters.get(v.replica_id, ())]
        if having:
            return having
        fewest = min(len(self._adapters.get(v.replica_id, ())) for v in views)
        return [v for v in views if len(self._adapters.get(v.replica_id, ())) == fewest]

    def rank(self, request, views, rng):
        if not self._tenants_added:
            self.tree.add_tenants([v.replica_id for v in views], 0.0)
            self._tenants_added = True
        candidates = self._multiplex_candidates(request, views)
        fallback = power_of_two(candidates, rng)  # PowerOfTwoChoicesRequestRouter.choose_replicas
        queue_lens = [v.num_ongoing for v in candidates]
        if max(queue_lens) - min(queue_lens) > self.imbalanced_threshold:
            return [fallback]
        text = prompt_text(request.token_ids)
        matched_text, matched_tenants = self.tree.prefix_match(text, [v.replica_id for v in candidates])
        if len(matched_text) / len(text) < self.match_rate_threshold:
            chosen = self.tree.get_smallest_tenants() or []  # over the whole tree, as Ray's actor answers
        else:
            chosen = matched_tenants or []
        by_id = {v.replica_id: v for v in views}
        group = [by_id[t] for t in chosen if t in by_id]
        return [group] if group else [fallback]

    def on_routed(self, request, replica_id, now):
        self.tree.insert(prompt_text(request.token_ids), replica_id, now)  # on_request_routed

    def on_report(self, replica_id, hashes, adapters, now):
        self._adapters[replica_id] = adapters


class PolyheadPolicy(RoundRobin):
    """CacheAwarePolicy over the router's PrefixIndex; resident adapters as last reported plus the ones
    requests were just sent with (the replica starts loading those on arrival)."""

    name = "polyhead"

    def __init__(self, policy: CacheAwarePolicy | None = None):
        super().__init__()
        self.policy = policy or CacheAwarePolicy()
        self.index = PrefixIndex()
        self._adapters: dict[str, set[str]] = {}

    def view_fields(self, replica_id: str) -> tuple:
        return self.index.cached_for(replica_id), self._adapters.get(replica_id, set())

    def rank(self, request, views, rng):
        route = RouteRequest(request.routed_hashes, request.num_prompt_tokens, request.adapter, self.block_size)
        return self.policy.rank(route, views, rng)

    def on_routed(self, request, replica_id, now):
        self.index.record_routed(replica_id, request.routed_hashes, now)
        if request.adapter is not None:
            self._adapters.setdefault(replica_id, set()).add(request.adapter)

    def on_report(self, replica_id, hashes, adapters, now):
        self.index.update_reported(replica_id, hashes, now)
        self._adapters[replica_id] = set(adapters)


def make_policy(name: str, imbalance_threshold: int = 16):
    if name == "round-robin":
        return RoundRobin()
    if name == "power-of-two":
        return PowerOfTwo()
    if name == "ray-prefix":
        return RayPrefixAffinity()
    if name.startswith("ray-prefix-t"):
        return RayPrefixAffinity(imbalanced_threshold=float(name.removeprefix("ray-prefix-t")))
    if name == "polyhead":
        return PolyheadPolicy(CacheAwarePolicy(imbalance_threshold=imbalance_threshold))
    raise ValueError(f"--policies: unknown policy {name!r} (known: {', '.join(POLICIES)})")
