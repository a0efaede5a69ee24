"""Scheduling policies wired through EngineConfig, the CLI and both engines (tiny random models)."""

import pytest

from polyhead.config import EngineConfig
from polyhead.engine.core.params import SamplingParams
from polyhead.engine.core.policy import PriorityPolicy
from tests.engine.test_policy import FakeClock

# --- configuration -------------------------------------------------------------------------------

def test_engine_config_validates_policy_and_weights():
    with pytest.raises(ValueError, match="policy must be one of fcfs, priority, fair"):
        EngineConfig(policy="lottery")
    with pytest.raises(ValueError, match=r"tenant_weights\['bob'\] must be a number > 0"):
        EngineConfig(policy="fair", tenant_weights={"bob": 0})
    with pytest.raises(ValueError, match="task_weights"):
        EngineConfig(policy="fair", task_weights={"chat": -1})
    with pytest.raises(ValueError, match="pooling_token_budget must be >= 0"):
        EngineConfig(pooling_token_budget=-1)


def test_cli_flags_reach_the_engine_config(capsys):
    from polyhead.cli import build_parser, engine_config, main

    args = build_parser().parse_args(["serve", "--policy", "fair", "--tenant-weight", "alice=2", "--tenant-weight",
                                      "=0.5", "--task-weight", "chat=3", "--pooling-token-budget", "0"])
    config = engine_config(args)
    assert config.policy == "fair" and config.pooling_token_budget == 0
    assert config.tenant_weights == {"alice": 2.0, "": 0.5} and config.task_weights == {"chat": 3.0}
    assert main(["run", "hi", "--tenant-weight", "alice"]) == 2
    assert "--tenant-weight takes NAME=WEIGHT" in capsys.readouterr().err


# --- through the engine, on a tiny random model ----------------------------------------------------

def test_engine_wires_the_policy_and_times_out_requests(tiny_llama):
    from tests.conftest import make_engine

    folder, _ = tiny_llama
    engine = make_engine(folder, policy="priority", max_num_seqs=1)
    assert isinstance(engine.backend.scheduler.policy, PriorityPolicy)
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    engine.add_request([5, 6, 7], params, req_id="low", priority=1)
    engine.add_request([8, 9, 10], params, req_id="high", priority=0)
    finished = []
    while engine.has_unfinished_requests():
        finished += [out.req_id for out in engine.step() if out.finished]
    assert finished == ["high", "low"]

    clock = FakeClock()
    engine.backend.scheduler.clock = clock
    engine.add_request([1, 2, 3, 4], SamplingParams(max_tokens=50, ignore_eos=True), req_id="slow", deadline=5.0)
    engine.add_request([4, 3, 2], params, req_id="expired", deadline=-1.0)
    outs = {out.req_id: out for out in engine.step()}
    assert outs["expired"].finished and outs["expired"].finish_reason == "timeout" and outs["expired"].token_ids == []
    engine.step()
    clock.now = 5.0
    (out,) = engine.step()
    assert out.req_id == "slow" and out.finished and out.finish_reason == "timeout" and len(out.token_ids) == 2
    assert not engine.has_unfinished_requests()
    assert engine.backend.kv_cache.num_free_blocks == engine.backend.kv_cache.num_blocks

    fair = make_engine(folder, policy="fair", tenant_weights={"a": 2.0}, task_weights={"chat": 3.0})
    policy = fair.backend.scheduler.policy
    assert policy.tenants.weights == {"a": 2.0} and policy.task_weights == {"chat": 3.0}


def test_encoder_engine_orders_by_the_policy_and_times_out_waiting_requests(tiny_encoder):
    from tests.conftest import make_encoder_engine

    engine = make_encoder_engine(tiny_encoder[0], max_num_batched_tokens=24, max_num_seqs=1, policy="priority")
    clock = FakeClock()
    engine.backend.clock = clock
    for req_id, priority in [("low", 2), ("mid", 1), ("high", 0)]:
        engine.add_request("hello world", req_id=req_id, priority=priority)
    engine.add_request("cats", req_id="late", deadline=1.0, priority=3)
    assert [o.req_id for o in engine.step()] == ["high"]
    clock.now = 1.0
    outs = engine.step()
    assert [(o.req_id, o.finish_reason) for o in outs] == [("late", "timeout"), ("mid", "stop")]
    assert [o.req_id for o in engine.step()] == ["low"] and not engine.has_unfinished_requests()
