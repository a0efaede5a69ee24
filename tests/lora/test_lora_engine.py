"""Adapters in the engine: greedy output equals PEFT's, a mixed batch gives every request what
it gets alone, eviction and reload change nothing, and loading never holds up the step loop."""

import threading

import pytest
import torch

from polyhead.engine.core.params import SamplingParams
from polyhead.lora.adapter import load_adapter
from tests.conftest import make_engine, needs_native_bf16
from tests.lora.conftest import GREEDY, reference_greedy, run_until_done


def prompts_of(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=gen).tolist() for n in lengths]


def lora_engine(lora_base, adapters, names, preload=False, **options):
    engine = make_engine(lora_base, **options)
    for name in names:
        engine.register_adapter(name, str(adapters[name]))
        while preload and not engine.backend.lora.is_ready(name):  # resident before the first step
            engine.backend.lora.wait_loaded(name)
    return engine


def run_alone(engine, prompt, adapter, params=GREEDY):
    engine.add_request(prompt, params, req_id="alone", adapter=adapter)
    return run_until_done(engine)["alone"]


def assert_same(got, expected):
    assert got[0] == expected[0]
    torch.testing.assert_close(torch.tensor(got[1]), torch.tensor(expected[1]), atol=1e-4, rtol=0)


def test_greedy_with_adapter_equals_peft_generate(lora_base, adapters, references):
    engine = lora_engine(lora_base, adapters, ["all", "mlp"])
    prompts = prompts_of([13, 6], seed=1)
    engine.add_request(prompts[0], GREEDY, req_id="all", adapter="all")
    engine.add_request(prompts[1], GREEDY, req_id="mlp", adapter="mlp")
    results = run_until_done(engine)
    for name, prompt in zip(["all", "mlp"], prompts):
        with torch.no_grad():
            generated = references[name].generate(input_ids=torch.tensor([prompt]), max_new_tokens=GREEDY.max_tokens,
                                                  do_sample=False, attention_mask=torch.ones(1, len(prompt)))
        assert results[name][0] == generated[0, len(prompt):].tolist()
        assert_same(results[name], reference_greedy(references[name], prompt, GREEDY.max_tokens))
    assert results["all"][0] != reference_greedy(references[None], prompts[0], GREEDY.max_tokens)[0]


def test_mixed_batch_gives_every_request_what_it_gets_alone(lora_base, adapters):
    """Two adapters and the base, decode rows and prefill chunks in the same steps."""
    engine = lora_engine(lora_base, adapters, ["qv", "all"], max_num_batched_tokens=12, block_size=4)
    steps = []
    runner = engine.backend.runner
    execute = runner.execute
    num_reordered = 0

    def execute_and_check(sched):
        """The runner lays rows out in its own order; the scheduler's output stays as it was."""
        nonlocal num_reordered
        before = list(sched.scheduled)
        num_reordered += engine.backend.lora.order_rows(before) != before
        result = execute(sched)
        assert sched.scheduled == before
        steps.append([(r.adapter, n) for r, n in sched.scheduled])
        return result

    runner.execute = execute_and_check
    prompts = prompts_of([5, 19, 7, 26, 3, 11], seed=2)
    names = [None, "qv", "all", "qv", None, "all"]
    for i, (prompt, name) in enumerate(zip(prompts[:3], names)):
        engine.add_request(prompt, GREEDY, req_id=str(i), adapter=name)
    results = {}
    for _ in range(3):  # the rest join while the first ones decode
        for out in engine.step():
            assert not out.finished
    for i, (prompt, name) in enumerate(zip(prompts[3:], names[3:]), start=3):
        engine.add_request(prompt, GREEDY, req_id=str(i), adapter=name)
    results = run_until_done(engine)
    mixed = [s for s in steps if {a for a, n in s if n == 1} >= {None, "qv", "all"}
             and any(n > 1 for _, n in s)]
    assert mixed, "no step mixed decode rows of both adapters and the base with a prefill chunk"
    assert num_reordered, "no step whose rows the runner had to regroup by adapter"
    for i, (prompt, name) in enumerate(zip(prompts, names)):
        assert_same(results[str(i)], run_alone(engine, prompt, name))


def test_eviction_and_reload_keep_results_identical(lora_base, adapters):
    engine = lora_engine(lora_base, adapters, ["qv", "all", "mlp"], max_loras=1)
    (prompt,) = prompts_of([10], seed=3)
    first = {name: run_alone(engine, prompt, name) for name in ("qv", "all", "mlp")}
    assert engine.backend.lora.num_loads == 3 and engine.backend.lora.num_evictions == 2
    again = {name: run_alone(engine, prompt, name) for name in ("all", "qv", "mlp")}
    assert engine.backend.lora.num_loads == 6 and list(engine.backend.lora.resident) == ["mlp"]
    for name, result in first.items():
        assert_same(again[name], result)
    # all three at once with one slot: each waits for the one before to finish, none is wrong
    for name in ("qv", "all", "mlp"):
        engine.add_request(prompt, GREEDY, req_id=name, adapter=name)
    together = run_until_done(engine)
    for name, result in first.items():
        assert_same(together[name], result)


def test_loading_does_not_block_the_step_loop(lora_base, adapters):
    engine = lora_engine(lora_base, adapters, ["qv"])
    started, release = threading.Event(), threading.Event()

    def held_loader(name, folder):
        started.set()
        assert release.wait(30), "the test never released the loader"
        return load_adapter(name, folder, engine.backend.model_config, torch.float32, 64)

    engine.backend.lora.loader = held_loader
    base_prompt, lora_prompt = prompts_of([6, 8], seed=4)
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    engine.add_request(base_prompt, params, req_id="base")
    engine.add_request(lora_prompt, params, req_id="lora", adapter="qv")
    lora_request = engine.backend.scheduler.requests["lora"]
    base_tokens = 0
    for _ in range(5):  # steps run while the load is held
        base_tokens += sum(len(o.new_token_ids) for o in engine.step() if o.req_id == "base")
    assert started.is_set() and base_tokens == 5
    assert lora_request.num_computed_tokens == 0 and "qv" not in engine.backend.lora.resident
    release.set()
    engine.backend.lora.wait_loaded("qv", timeout=30)
    engine.step()
    assert lora_request.num_computed_tokens == len(lora_prompt) and "qv" in engine.backend.lora.resident
    run_until_done(engine)


def test_failed_load_fails_only_its_requests(lora_base, adapters):
    engine = lora_engine(lora_base, adapters, ["qv"])

    def broken_loader(name, folder):
        raise OSError(f"cannot read {folder}")

    engine.backend.lora.loader = broken_loader
    engine.add_request([1, 2, 3], GREEDY, req_id="base")
    engine.add_request([4, 5, 6], GREEDY, req_id="lora", adapter="qv")
    engine.step()
    engine.backend.lora.wait_loaded("qv", timeout=30)
    outputs = {}
    while engine.has_unfinished_requests():
        outputs.update({o.req_id: o for o in engine.step() if o.finished})
    assert outputs["lora"].finish_reason == "error" and "cannot read" in outputs["lora"].error
    assert outputs["base"].finish_reason == "length" and len(outputs["base"].token_ids) == GREEDY.max_tokens


def test_unknown_adapter_is_refused_naming_the_registered_ones(lora_base, adapters):
    engine = lora_engine(lora_base, adapters, ["qv", "mlp"])
    with pytest.raises(ValueError, match=r"adapter 'nope' is not registered \(registered adapters: mlp, qv\)"):
        engine.add_request([1, 2], GREEDY, adapter="nope")
    with pytest.raises(ValueError, match="already registered"):
        engine.register_adapter("qv", str(adapters["all"]))


def test_config_limits():
    from polyhead.config import EngineConfig

    for field in ("max_loras", "max_lora_rank"):
        with pytest.raises(ValueError, match=f"{field} must be >= 1"):
            EngineConfig(**{field: 0})


def test_mixed_batch_with_pooling_rows_two_adapters_and_base(lora_base, adapters, references):
    """Decode rows, a prefill chunk and classify / tag / embed / score rows, each kind with the
    base or one of two adapters, all in one step: every row gets what it gets alone, and the
    pooled values equal PEFT's model's hidden states through the same heads."""
    from polyhead.engine.core.params import PoolingParams
    from tests.engine.pooling_reference import assert_pooled_close, make_heads, reference, register_heads

    heads = make_heads()
    engine = lora_engine(lora_base, adapters, ["qv", "all"], preload=True, block_size=4, max_num_batched_tokens=200)
    register_heads(engine, heads)
    steps = []
    execute = engine.backend.runner.execute
    engine.backend.runner.execute = lambda sched: steps.append(
        [(r.adapter, r.is_pooling, n) for r, n in sched.scheduled]) or execute(sched)
    decodes = prompts_of([6, 11, 3], seed=12)
    generate = {"gen-base": (decodes[0], None), "gen-qv": (decodes[1], "qv"), "gen-all": (decodes[2], "all")}
    for req_id, (prompt, name) in generate.items():
        engine.add_request(prompt, GREEDY, req_id=req_id, adapter=name)
    engine.step()  # their prefills; from now on they decode
    long_prompt, text = prompts_of([120, 23], seed=13)
    generate["long-all"] = (long_prompt, "all")
    pooling = {  # req_id -> (params, reference options, adapter)
        "classify-qv": (PoolingParams("classify", task="sentiment"), {"task": "sentiment"}, "qv"),
        "classify-base": (PoolingParams("classify", task="topic"), {"task": "topic"}, None),
        "tag-all": (PoolingParams("tag", task="ner"), {"task": "ner"}, "all"),
        "tag-base": (PoolingParams("tag", task="ner"), {"task": "ner"}, None),
        "embed-qv": (PoolingParams("embed", task="embed"), {"task": "embed"}, "qv"),
        "embed-all": (PoolingParams("embed", pooling="mean", normalize=True), {"pooling": "mean", "normalize": True},
                      "all"),
        "score-all": (PoolingParams("score", num_scored_tokens=4), {"num_scored_tokens": 4}, "all"),
    }
    for req_id, (params, _, name) in pooling.items():
        engine.add_request(text, params, req_id=req_id, adapter=name)
    engine.add_request(long_prompt, GREEDY, req_id="long-all", adapter="all")  # a chunk of what is left
    results = {}
    while engine.has_unfinished_requests():
        results.update({o.req_id: o for o in engine.step() if o.finished})

    mixed = steps[1]
    assert {(a, n) for a, pooled, n in mixed if n == 1} == {(None, 1), ("qv", 1), ("all", 1)}
    assert {a for a, pooled, _ in mixed if pooled} == {None, "qv", "all"}
    assert ("all", False, 200 - 3 - 7 * 23) in mixed  # the long prompt's first chunk
    for req_id, (prompt, name) in generate.items():
        out = results[req_id]
        assert_same((out.token_ids, [lp.logprob for lp in out.logprobs]), run_alone(engine, prompt, name))
    for req_id, (params, options, name) in pooling.items():
        engine.add_request(text, params, req_id="alone", adapter=name)
        alone = run_until_done_pooled(engine)["alone"]
        assert_pooled_close(results[req_id].pooled, alone)
        assert_pooled_close(alone, reference(references[name].base_model.model if name else references[None],
                                             heads, text, params.kind, **options))


def run_until_done_pooled(engine):
    results = {}
    while engine.has_unfinished_requests():
        results.update({o.req_id: o.pooled for o in engine.step() if o.finished})
    return results


def test_prefix_cache_is_per_adapter(lora_base, adapters):
    """Keys and values computed under one adapter are never served to another (or to the base)."""
    (prompt,) = prompts_of([21], seed=6)
    uncached = lora_engine(lora_base, adapters, ["qv", "all"], block_size=4, enable_prefix_caching=False)
    fresh = {name: run_alone(uncached, prompt, name) for name in (None, "qv", "all")}
    engine = lora_engine(lora_base, adapters, ["qv", "all"], preload=True, block_size=4)
    engine.add_request(prompt, GREEDY, req_id="warm")  # the base's blocks are cached first
    run_until_done(engine)
    # (adapter, prompt tokens its own cache entries can serve): the base's blocks serve neither adapter
    for name, num_cached in ((None, 20), ("qv", 0), ("all", 0), ("qv", 20), ("all", 20)):
        engine.add_request(prompt, GREEDY, req_id="again", adapter=name)
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    assert out.num_cached_tokens == num_cached, name
                    assert_same((out.token_ids, [lp.logprob for lp in out.logprobs]), fresh[name])
    assert len({tuple(result[0]) for result in fresh.values()}) == 3


@needs_native_bf16
def test_bfloat16_adapter_rows_on_the_packed_and_gemv_paths(lora_base, adapters, references):
    """bf16 serving wraps oneDNN-packed layers and, for 1-4 rows, the native GEMV: the adapter's
    effect survives on both (log-probs near PEFT's float32 ones, far from the base's)."""
    from polyhead.lora.layer import LoRALinear

    engine = lora_engine(lora_base, adapters, ["all"], preload=True, dtype="bfloat16")
    wrapped = [m.base for m in engine.backend.model.modules() if isinstance(m, LoRALinear)]
    if getattr(wrapped[0], "gemv", None) is None:
        pytest.skip("no native bf16 GEMV on this CPU")
    prompts = prompts_of([9, 9, 9, 9, 9, 9], seed=7)
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True, logprobs=0)
    for rows in (1, 6):  # decode steps of 1 row run the GEMV; of 6 rows, the packed oneDNN layer
        for i in range(rows):
            engine.add_request(prompts[i], params, req_id=str(i), adapter="all")
        outputs = run_until_done(engine)
        for i in range(rows):
            tokens, logprobs = outputs[str(i)]
            ids = prompts[i] + tokens
            with torch.no_grad():
                ref = torch.log_softmax(references["all"](input_ids=torch.tensor([ids])).logits[0], -1)
                base = torch.log_softmax(references[None](input_ids=torch.tensor([ids])).logits[0], -1)
            for step, token in enumerate(tokens):
                position = len(prompts[i]) - 1 + step
                assert abs(logprobs[step] - float(ref[position, token])) < 0.1
                assert (ref[position] - base[position]).abs().max() > 0.5  # the adapter matters at this tolerance


def test_loaded_adapters_waiting_for_a_slot_are_bounded(lora_base, adapters):
    """With every slot serving a running request, adapters asked for are loaded ahead, but at
    most max_loras of them are held; each request still finishes with its own adapter."""
    engine = lora_engine(lora_base, adapters, ["qv", "all", "mlp", "ko"], preload=True, max_loras=1)
    (prompt,) = prompts_of([7], seed=8)
    alone = {name: run_alone(engine, prompt, name) for name in ("qv", "all", "mlp", "ko")}
    long = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    engine.add_request(prompt, long, req_id="runner", adapter="ko")  # holds the one slot
    engine.step()
    for name in ("qv", "all", "mlp"):
        engine.add_request(prompt, GREEDY, req_id=name, adapter=name)
    peak = 0
    results = {}
    while engine.has_unfinished_requests():
        results.update({o.req_id: (o.token_ids, [lp.logprob for lp in o.logprobs or []])
                        for o in engine.step() if o.finished})
        peak = max(peak, len(engine.backend.lora.loading) + len(engine.backend.lora.resident))
    assert peak == 2  # one resident, one loaded ahead
    for name in ("qv", "all", "mlp"):
        assert_same(results[name], alone[name])


def test_a_loaded_adapter_nobody_waits_for_gives_way(lora_base, adapters):
    engine = lora_engine(lora_base, adapters, ["qv", "all", "ko"], preload=True, max_loras=1)
    (prompt,) = prompts_of([7], seed=9)
    expected = run_alone(engine, prompt, "all")
    while not engine.backend.lora.is_ready("ko"):
        engine.backend.lora.wait_loaded("ko")
    engine.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True), req_id="runner",
                       adapter="ko")  # holds the one slot
    engine.add_request(prompt, GREEDY, req_id="q", adapter="qv")
    engine.step()
    engine.backend.lora.wait_loaded("qv", timeout=30)
    engine.abort_request("q")  # qv is loaded, waits for a slot, and nobody wants it any more
    engine.add_request(prompt, GREEDY, req_id="a", adapter="all")
    for _ in range(3):
        engine.step()
    assert "qv" not in engine.backend.lora.loading and "all" in engine.backend.lora.loading
    results = {}
    while engine.has_unfinished_requests():
        results.update({o.req_id: (o.token_ids, [lp.logprob for lp in o.logprobs or []])
                        for o in engine.step() if o.finished})
    assert_same(results["a"], expected)
