"""The scheduler's token budget, ordering, chunking and preemption, without a model."""

from polyhead.engine.core.params import SamplingParams
from polyhead.engine.core.request import Request, RequestStatus
from polyhead.engine.decoder.kv_cache import KVCacheManager
from polyhead.engine.decoder.scheduler import Scheduler


def make(num_blocks=64, block_size=4, budget=16, max_seqs=8):
    return Scheduler(KVCacheManager(num_blocks, block_size), max_seqs, budget, max_model_len=1000)


def add(sched, req_id, n, max_tokens=100):
    base = 1000 * (len(sched.requests) + 1)  # distinct prompts: no prefix-cache hits between them
    req = Request(req_id, list(range(base, base + n)), SamplingParams(max_tokens=max_tokens), frozenset({2}))
    sched.add(req)
    return req


def step(sched, token=7):
    """Schedule and pretend the model ran: every row that reached its end samples `token`."""
    out = sched.schedule()
    sampled = {r.req_id: token for r, n in out.scheduled if r.num_computed_tokens + n == r.num_tokens}
    sched.update(out, sampled)
    return {r.req_id: n for r, n in out.scheduled}


def test_budget_caps_tokens_and_chunks_long_prompts():
    sched = make(budget=16)
    add(sched, "long", 40)
    add(sched, "short", 5)
    assert step(sched) == {"long": 16}
    assert step(sched) == {"long": 16}
    assert step(sched) == {"long": 8, "short": 5}  # the rest of the budget admits the next prompt
    assert step(sched) == {"long": 1, "short": 1}  # both decoding now


def test_decodes_go_first_and_are_never_stalled_by_a_long_prompt():
    sched = make(budget=8)
    add(sched, "a", 3)
    step(sched)  # a is decoding from now on
    add(sched, "long", 50)
    for _ in range(5):
        scheduled = step(sched)
        assert scheduled["a"] == 1 and scheduled["long"] == 7


def test_max_num_seqs_limits_running_requests():
    sched = make(budget=100, max_seqs=2)
    for i in range(3):
        add(sched, str(i), 2)
    assert set(step(sched)) == {"0", "1"}
    assert len(sched.waiting) == 1


def test_newest_running_request_is_preempted_when_blocks_run_out():
    sched = make(num_blocks=4, block_size=4, budget=64)
    old, new = add(sched, "old", 7), add(sched, "new", 7)
    step(sched)  # each holds 2 blocks for 8 tokens (7 + 1 sampled); no block is free
    assert sched.kv_cache.num_free_blocks == 0
    step(sched)  # both decode into their 2nd block's last slot
    scheduled = step(sched)  # old needs a 3rd block: new is preempted and gives its blocks back
    assert scheduled == {"old": 1}
    assert new.status == RequestStatus.PREEMPTED and new.num_computed_tokens == 0
    assert sched.waiting[0] is new and sched.num_preemptions == 1
    assert old.status == RequestStatus.RUNNING


def test_finish_frees_blocks_for_waiting_and_running_requests():
    sched = make()
    running, waiting = add(sched, "run", 6), add(sched, "wait", 6)
    sched.max_num_seqs = 1
    step(sched)
    free_before = sched.kv_cache.num_free_blocks
    sched.finish("run", RequestStatus.FINISHED_ABORTED)
    sched.finish("wait", RequestStatus.FINISHED_ABORTED)
    assert sched.kv_cache.num_free_blocks == free_before + 2
    assert not sched.running and not sched.waiting and sched.num_unfinished == 0
    assert running.status.is_finished and waiting.status.finish_reason == "abort"


def test_eos_and_max_tokens_finish_requests():
    sched = make()
    eos = add(sched, "eos", 3)
    capped = add(sched, "capped", 3, max_tokens=2)
    out = sched.schedule()
    sched.update(out, {"eos": 2, "capped": 5})
    assert eos.status == RequestStatus.FINISHED_STOPPED and eos.stop_reason == 2
    assert capped.status == RequestStatus.RUNNING
    out = sched.schedule()
    sched.update(out, {"capped": 5})
    assert capped.status == RequestStatus.FINISHED_LENGTH and capped.output_token_ids == [5, 5]
