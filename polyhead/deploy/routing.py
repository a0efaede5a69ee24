"""Which replica a request goes to: the one where it costs least, counted in prompt tokens.

The rule: a replica's score is the prefill it saves (the request's first KV blocks it already holds,
named by the engine's chained block hash) minus an adapter load if the request's LoRA adapter is not
resident there, minus the work already waiting there. The best score wins, unless the replica it names
is more than `imbalance_threshold` requests busier than the least-loaded one: then the request falls
back to power-of-two among the replicas that are not overloaded, so a hot prefix spills over instead
of queueing on one replica. Pure Python: the Ray Serve router (polyhead/deploy) and the simulation
(`polyhead bench routing`) call the same `rank`.
"""

import random
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

ROUTED_BLOCKS = 32  # the request's first 32 KV blocks (512 tokens at block_size 16): a system prompt's length

# The weights, in prompt-token equivalents, set from the calibrated simulation (`polyhead bench routing`,
# step_s = a + b x prefill tokens + c x decode rows, measured in polyhead/bench/data/routing_step_time.json):
# - a cached prompt token saves one token of prefill (b seconds) on that replica: weight 1, the unit.
ADAPTER_MISS_TOKENS = 256  # an adapter load (~0.05 s) is ~200 tokens of prefill at b ~ 0.26 ms, and it may
#                            evict an adapter that the next request there needs: rounded up to 256
ONGOING_TOKENS = 24  # each request already there delays a new prefill by more than its share of a step:
#                      a queued one by its own prefill, a running one by c per step for every step the new
#                      prompt's chunks take. Swept 8/24/64 x threshold 8/16/32 at 8 and 32 replicas on both
#                      workloads: 24 with 16 was within 25% of each cell's best p99 TTFT; threshold 8 spills
#                      too early (p99 100x worse on mixed at 32), 64 spreads prefixes (10x worse there)
QUEUED_TOKEN_WEIGHT = 1.0  # prompt tokens waiting ahead of it (FCFS) are prefilled first, token for token


@dataclass(slots=True)
class RouteRequest:
    """What the router knows of one request."""

    prefix_hashes: list[int]  # block_hashes(token_ids, block_size, adapter, ROUTED_BLOCKS)
    num_prompt_tokens: int
    adapter: str | None  # the LoRA adapter it needs (None: base weights)
    block_size: int


@dataclass(slots=True)
class ReplicaView:
    """What the router knows of one replica at routing time."""

    replica_id: str
    num_ongoing: int  # requests queued or running there
    max_ongoing: int  # its admission cap (Ray's max_ongoing_requests)
    cached_prefixes: Collection[int]  # block hashes it holds (reported, merged with recent routes: PrefixIndex)
    resident_adapters: Collection[str]  # adapters loaded there
    num_queued_tokens: int = 0  # prompt tokens waiting there, when known

    @property
    def is_full(self) -> bool:
        return self.num_ongoing >= self.max_ongoing


def matched_blocks(prefix_hashes: Sequence[int], cached: Collection[int]) -> int:
    """How many of the request's first blocks the replica holds: the engine's lookup stops at the first miss."""
    for i, block_hash in enumerate(prefix_hashes):
        if block_hash not in cached:
            return i
    return len(prefix_hashes)


def power_of_two(replicas: Sequence[ReplicaView], rng: random.Random) -> list[ReplicaView]:
    """Two distinct replicas at random (all of them when fewer); Ray takes the less loaded."""
    if len(replicas) <= 2:
        return list(replicas)
    return rng.sample(list(replicas), 2)


class CacheAwarePolicy:
    """polyhead's routing policy: prefix match, adapter residency and load, in one score."""

    def __init__(self, imbalance_threshold: int = 16, adapter_miss_tokens: float = ADAPTER_MISS_TOKENS,
                 ongoing_tokens: float = ONGOING_TOKENS, queued_token_weight: float = QUEUED_TOKEN_WEIGHT):
        self.imbalance_threshold = imbalance_threshold  # requests; see the module's note
        self.adapter_miss_tokens = adapter_miss_tokens
        self.ongoing_tokens = ongoing_tokens
        self.queued_token_weight = queued_token_weight

    def score(self, request: RouteRequest, replica: ReplicaView) -> float:
        # the last prompt token is always computed (its logits give the first sample)
        saved = min(matched_blocks(request.prefix_hashes, replica.cached_prefixes) * request.block_size,
                    request.num_prompt_tokens - 1)
        adapter_cost = 0.0
        if request.adapter is not None and request.adapter not in replica.resident_adapters:
            adapter_cost = self.adapter_miss_tokens
        load = self.ongoing_tokens * replica.num_ongoing + self.queued_token_weight * replica.num_queued_tokens
        return saved - adapter_cost - load

    def rank(self, request: RouteRequest, replicas: Sequence[ReplicaView], rng: random.Random
             ) -> list[list[ReplicaView]]:
        """Candidate groups, best first (Ray's choose_replicas shape: Ray tries the first group,
        taking its least-loaded replica that accepts, then the next group)."""
        open_ = [r for r in replicas if not r.is_full]
        full = sorted((r for r in replicas if r.is_full), key=lambda r: r.num_ongoing)
        if not open_:
            return [full] if full else []
        least = min(r.num_ongoing for r in open_)
        not_overloaded = [r for r in open_ if r.num_ongoing - least <= self.imbalance_threshold]
        if not self._has_preference(request, open_):
            first = power_of_two(not_overloaded, rng)
        else:
            scored = sorted(open_, key=lambda r: -self.score(request, r))
            best = scored[0]
            first = [best] if best.num_ongoing - least <= self.imbalance_threshold else power_of_two(
                not_overloaded, rng)
        chosen = {id(r) for r in first}
        rest = sorted((r for r in open_ if id(r) not in chosen), key=lambda r: r.num_ongoing)
        return [group for group in (first, rest, full) if group]

    @staticmethod
    def _has_preference(request: RouteRequest, replicas: Sequence[ReplicaView]) -> bool:
        """Whether any replica holds the request's first block or its adapter (else only load matters)."""
        if request.prefix_hashes and any(request.prefix_hashes[0] in r.cached_prefixes for r in replicas):
            return True
        return request.adapter is not None and any(request.adapter in r.resident_adapters for r in replicas)


ROUTED_KEPT_S = 5.0  # a route outlives reports this long: a prompt sent just before a report is not
#                     prefilled (so not reported) yet, and dropping it would send its followers elsewhere


@dataclass(slots=True)
class _ReplicaPrefixes:
    reported: set[int] = field(default_factory=set)  # the replica's last report
    routed: OrderedDict = field(default_factory=OrderedDict)  # hash -> when it was sent there, oldest first


class _Union(Collection[int]):
    """The reported set and the recent routes, read as one collection without copying either."""

    def __init__(self, reported: set[int], routed: OrderedDict):
        self._reported, self._routed = reported, routed

    def __contains__(self, block_hash) -> bool:
        return block_hash in self._routed or block_hash in self._reported

    def __iter__(self) -> Iterator[int]:
        yield from self._reported
        yield from (h for h in self._routed if h not in self._reported)

    def __len__(self) -> int:
        return len(self._reported) + sum(1 for h in self._routed if h not in self._reported)


class PrefixIndex:
    """The router's memory of which replica holds which prefix blocks: each replica's last report,
    plus the prompts routed there lately (optimistic: they will be cached once prefilled). A report
    replaces the last one and the routes older than ROUTED_KEPT_S (the report has them, or the
    replica evicted them); newer routes stay, since a report lags the prefill of what was just sent.
    Memory is bounded: at most `max_entries_per_replica` hashes per replica in each part (LRU).
    `now` is the caller's clock (time.monotonic(), or the simulation's)."""

    def __init__(self, max_entries_per_replica: int = 65_536, routed_kept_s: float = ROUTED_KEPT_S):
        self.max_entries_per_replica = max_entries_per_replica
        self.routed_kept_s = routed_kept_s
        self._replicas: dict[str, _ReplicaPrefixes] = {}

    def record_routed(self, replica_id: str, prefix_hashes: list[int], now: float) -> None:
        routed = self._replicas.setdefault(replica_id, _ReplicaPrefixes()).routed
        for block_hash in prefix_hashes:
            routed[block_hash] = now
            routed.move_to_end(block_hash)
        while len(routed) > self.max_entries_per_replica:
            routed.popitem(last=False)

    def update_reported(self, replica_id: str, hashes: Collection[int], now: float) -> None:
        reported = set(hashes)
        if len(reported) > self.max_entries_per_replica:  # a report is a set: keep any cap's worth
            reported = set(list(reported)[:self.max_entries_per_replica])
        entry = self._replicas.setdefault(replica_id, _ReplicaPrefixes())
        entry.reported = reported
        routed = entry.routed
        while routed and next(iter(routed.values())) < now - self.routed_kept_s:
            routed.popitem(last=False)

    def forget(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)

    def cached_for(self, replica_id: str) -> Collection[int]:
        entry = self._replicas.get(replica_id)
        if entry is None:
            return frozenset()
        return _Union(entry.reported, entry.routed)

    def num_entries(self) -> int:
        return sum(len(e.reported) + len(e.routed) for e in self._replicas.values())
