"""CacheAwarePolicy and PrefixIndex, the pure-Python routing the Ray router calls: what wins a request
(prefix match, resident adapter, load), when it falls back to power-of-two, and the index's bounds."""

import random
import subprocess
import sys

from polyhead.deploy.routing import ROUTED_BLOCKS, CacheAwarePolicy, PrefixIndex, ReplicaView, RouteRequest
from polyhead.engine.core.block_hash import block_hashes

PROMPT = list(range(1000, 1000 + 16 * 20))  # 20 full blocks


def request(adapter=None, tokens=PROMPT):
    return RouteRequest(block_hashes(tokens, 16, adapter, ROUTED_BLOCKS), len(tokens), adapter, 16)


def view(name, ongoing=0, cached=(), adapters=(), max_ongoing=8):
    return ReplicaView(name, ongoing, max_ongoing, set(cached), set(adapters))


def test_the_longest_prefix_match_wins():
    hashes = request().prefix_hashes
    replicas = [view("a", cached=hashes[:3]), view("b", cached=hashes[:12]), view("c", cached=hashes[:7]), view("d")]
    groups = CacheAwarePolicy().rank(request(), replicas, random.Random(0))
    assert [r.replica_id for r in groups[0]] == ["b"]
    assert {r.replica_id for g in groups for r in g} == {"a", "b", "c", "d"}


def test_a_match_is_a_chain_from_the_first_block():
    hashes = request().prefix_hashes
    replicas = [view("tail-only", cached=hashes[1:]), view("head", cached=hashes[:2])]
    assert CacheAwarePolicy().rank(request(), replicas, random.Random(0))[0][0].replica_id == "head"


def test_a_resident_adapter_is_preferred_when_no_prefix_matches():
    replicas = [view("a"), view("b", adapters={"lora-7"}), view("c", adapters={"lora-1"})]
    for seed in range(5):
        groups = CacheAwarePolicy().rank(request("lora-7"), replicas, random.Random(seed))
        assert [r.replica_id for r in groups[0]] == ["b"]


def test_load_outweighs_a_short_match():
    hashes = request().prefix_hashes
    replicas = [view("busy", ongoing=6, cached=hashes[:1], max_ongoing=64), view("idle", max_ongoing=64)]
    assert CacheAwarePolicy().rank(request(), replicas, random.Random(0))[0][0].replica_id == "idle"


def test_imbalance_falls_back_to_power_of_two_among_the_not_overloaded():
    hashes = request().prefix_hashes
    policy = CacheAwarePolicy(imbalance_threshold=4)
    replicas = [view("hot", ongoing=10, cached=hashes, max_ongoing=64)] + [
        view(f"r{i}", ongoing=i % 3, max_ongoing=64) for i in range(6)]
    seen = set()
    for seed in range(20):
        first = policy.rank(request(), replicas, random.Random(seed))[0]
        assert len(first) == 2 and "hot" not in {r.replica_id for r in first}
        seen.update(r.replica_id for r in first)
    assert len(seen) > 2  # random pairs, not one fixed choice
    # under the threshold the match wins again
    replicas[0].num_ongoing = 4
    assert policy.rank(request(), replicas, random.Random(0))[0][0].replica_id == "hot"


def test_no_preference_is_power_of_two():
    replicas = [view(f"r{i}") for i in range(8)]
    firsts = {tuple(r.replica_id for r in CacheAwarePolicy().rank(request(), replicas, random.Random(s))[0])
              for s in range(10)}
    assert all(len(pair) == 2 for pair in firsts) and len(firsts) > 3


def test_a_full_replica_is_never_in_the_first_group():
    hashes = request().prefix_hashes
    replicas = [view("full", ongoing=8, cached=hashes, adapters={"x"}), view("other", ongoing=7)]
    groups = CacheAwarePolicy(imbalance_threshold=100).rank(request("x"), replicas, random.Random(0))
    assert [r.replica_id for r in groups[0]] == ["other"]
    assert groups[-1][0].replica_id == "full"
    assert CacheAwarePolicy().rank(request(), [view("full", ongoing=8)], random.Random(0)) == [
        [view("full", ongoing=8)]]


def test_prefix_index_merges_routes_with_reports_and_a_report_replaces():
    index = PrefixIndex(routed_kept_s=5)
    index.record_routed("a", [1, 2, 3], now=0)
    assert {1, 2, 3} <= set(index.cached_for("a")) and 1 in index.cached_for("a")
    index.update_reported("a", {7, 8}, now=1)  # too soon: the routes may not be prefilled yet
    assert set(index.cached_for("a")) == {1, 2, 3, 7, 8}
    index.update_reported("a", {7, 8}, now=6)  # the routes are older than the report's lag
    assert set(index.cached_for("a")) == {7, 8} and 1 not in index.cached_for("a")
    index.record_routed("a", [9], now=7)
    assert set(index.cached_for("a")) == {7, 8, 9} and len(index.cached_for("a")) == 3
    index.forget("a")
    assert len(index.cached_for("a")) == 0 and 7 not in index.cached_for("a")


def test_prefix_index_is_bounded_least_recently_routed_first_out():
    index = PrefixIndex(max_entries_per_replica=4)
    index.record_routed("a", [1, 2, 3], now=0)
    index.record_routed("a", [1, 4, 5], now=1)  # 1 refreshed; 2 and 3 are the oldest
    assert set(index.cached_for("a")) == {1, 4, 5, 3}
    index.update_reported("a", set(range(100)), now=10)
    assert index.num_entries() == 4


def test_routing_imports_neither_ray_nor_torch():
    code = "import sys, polyhead.deploy.routing; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
