"""`polyhead bench routing`'s simulation: seeded and deterministic, every request finishes, the replica
model keeps its prefix cache and adapter slots, polyhead's policy beats round robin on prefix hits, and
the command runs on tiny sizes and writes its table and plot."""

import json

import pytest

from polyhead.bench.routing_calibration import StepTimeModel, fit, load_calibration
from polyhead.bench.routing_policies import POLICIES, make_policy
from polyhead.bench.routing_replica import ReplicaConfig, SimReplica
from polyhead.bench.routing_sim import simulate
from polyhead.bench.routing_workload import SimRequest, make_workload
from polyhead.cli import main
from polyhead.engine.core.block_hash import block_hashes

MODEL = StepTimeModel(0.04, 0.00025, 0.0005, adapter_load_s=0.05)


def run(policy, workload="shared-prefix", replicas=4, num=400, rate=8.0, seed=0):
    requests = make_workload(workload, num, rate, seed)
    return simulate(requests, make_policy(policy), replicas, ReplicaConfig(), MODEL, seed=seed), requests


def test_the_simulation_is_deterministic_for_a_seed_and_every_request_finishes():
    first, requests = run("power-of-two")
    second, _ = run("power-of-two")
    assert first == second
    assert first.num_finished == len(requests) == 400
    assert all(r.first_token_s is not None and r.finish_s >= r.first_token_s >= r.arrival_s for r in requests)
    assert run("power-of-two", seed=1)[0] != first


@pytest.mark.parametrize("workload", ["mixed", "unique"])
def test_every_policy_finishes_every_request(workload):
    for policy in ("round-robin", "power-of-two", "polyhead"):
        result, requests = run(policy, workload, num=200)
        assert result.num_finished == len(requests)
    assert "ray-prefix" in POLICIES


def test_polyhead_hits_the_prefix_cache_more_than_round_robin_on_shared_prefixes():
    robin, _ = run("round-robin", replicas=8, num=800, rate=16.0)
    mine, _ = run("polyhead", replicas=8, num=800, rate=16.0)
    assert mine.prefix_hit_rate > robin.prefix_hit_rate + 0.1
    assert mine.adapter_loads < robin.adapter_loads
    assert mine.ttft_p99_s < robin.ttft_p99_s


def test_ray_prefix_router_runs_on_rays_own_prefix_tree():
    pytest.importorskip("ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree")
    result, requests = run("ray-prefix", replicas=4, num=200)
    assert result.num_finished == len(requests) and result.prefix_hit_rate > 0.3
    assert make_policy("ray-prefix-t16").imbalanced_threshold == 16


def _request(req_id, tokens, output=4, adapter=None):
    request = SimRequest(req_id, 0.0, tokens, output, adapter, "generate")
    request.block_hashes = block_hashes(tokens, 16, adapter)
    return request


def _drain(replica, now=0.0):
    finished = []
    while (duration := replica.start_step(now)) is not None:
        now += duration
        finished += replica.finish_step(now)
    return finished, now


def test_a_replica_prefills_only_uncached_tokens_and_keeps_the_last_token():
    replica = SimReplica(0, ReplicaConfig(), MODEL)
    shared = list(range(100, 100 + 320))
    replica.submit(_request(0, shared + [1, 2, 3]))
    _drain(replica)
    second = _request(1, shared + [4, 5, 6])
    same = _request(2, list(shared))
    replica.submit(second)
    replica.submit(same)
    finished, _ = _drain(replica)
    assert len(finished) == 2
    assert second.num_cached_tokens == 320 and same.num_cached_tokens == 319


def test_a_replica_loads_an_adapter_once_and_caps_resident_ones():
    replica = SimReplica(0, ReplicaConfig(max_loras=2), MODEL)
    for i, adapter in enumerate(["a", "b", "a", "c"]):
        replica.submit(_request(i, [7] * 40, adapter=adapter))
    now = 0.0
    while replica.num_ongoing:
        duration = replica.start_step(now)
        now = now + duration if duration is not None else replica.next_wake()
        if duration is not None:
            replica.finish_step(now)
    assert replica.num_adapter_loads == 3 and len(replica.resident) == 2


def test_calibration_fit_recovers_a_linear_model_and_the_shipped_one_loads():
    points = [(p, k, 0.03 + 0.0002 * p + 0.0004 * k) for p in (0, 64, 256) for k in (1, 8, 32)]
    assert fit(points) == pytest.approx((0.03, 0.0002, 0.0004))
    shipped = load_calibration()
    assert shipped.base_s > 0 and shipped.per_prefill_token_s > 0 and shipped.per_decode_row_s > 0


def test_the_command_writes_its_table_and_plot(tmp_path, capsys):
    out, png = tmp_path / "routing.json", tmp_path / "routing.png"
    assert main(["bench", "routing", "--replicas", "4", "--policies", "round-robin,power-of-two,polyhead",
                 "--workload", "shared-prefix", "--requests-per-replica", "30", "--out", str(out),
                 "--plot", str(png)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["policy"] for r in rows] == ["round-robin", "power-of-two", "polyhead"]
    assert png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "| workload | replicas | policy | prefix hit |" in printed
    assert "shared-prefix x4: power-of-two p99 TTFT / polyhead =" in printed
    csv = tmp_path / "routing.csv"
    assert main(["bench", "routing", "--replicas", "4", "--policies", "polyhead", "--workload", "mixed",
                 "--requests-per-replica", "20", "--out", str(csv)]) == 0
    assert csv.read_text().splitlines()[0].startswith("policy,num_replicas,")
