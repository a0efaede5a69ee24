"""The engine's greedy output equals a transformers reference, token for token, whatever the
scheduler does: mixed lengths, requests joining mid-flight, prefix hits, chunked prefill,
preemption. Tiny random models keep each test under a second or two."""

import pytest
import torch

from polyhead.engine.core.params import SamplingParams
from tests.conftest import make_engine

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def hf_greedy(model, prompt: list[int], num_new: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(num_new):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def prompts_of(lengths, seed=0, vocab=256):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]


def run_all(engine, joins: dict[int, list[tuple[str, list[int]]]] | None = None) -> dict[str, list[int]]:
    """Step until done; `joins` adds requests just before the given step number."""
    joins, results, step = dict(joins or {}), {}, 0
    while engine.has_unfinished_requests() or joins:
        for req_id, prompt in joins.pop(step, []):
            engine.add_request(prompt, GREEDY, req_id=req_id)
        for out in engine.step():
            if out.finished:
                results[out.req_id] = out.token_ids
        step += 1
    return results


def test_batch_of_mixed_lengths_matches_transformers(tiny_llama):
    folder, hf = tiny_llama
    engine = make_engine(folder)
    prompts = prompts_of([3, 17, 40, 9, 1])
    for i, p in enumerate(prompts):
        engine.add_request(p, GREEDY, req_id=str(i))
    results = run_all(engine)
    for i, p in enumerate(prompts):
        assert results[str(i)] == hf_greedy(hf, p, GREEDY.max_tokens)


def test_requests_joining_mid_flight_match(tiny_llama):
    folder, hf = tiny_llama
    engine = make_engine(folder)
    prompts = prompts_of([5, 33, 12, 20], seed=1)
    joins = {0: [("a", prompts[0]), ("b", prompts[1])], 3: [("c", prompts[2])], 7: [("d", prompts[3])]}
    results = run_all(engine, joins)
    for req_id, p in zip("abcd", prompts):
        assert results[req_id] == hf_greedy(hf, p, GREEDY.max_tokens)


def test_shared_prefix_is_served_from_cache_and_matches(tiny_llama):
    folder, hf = tiny_llama
    engine = make_engine(folder, block_size=4)
    prefix = prompts_of([21], seed=2)[0]
    first, second = prefix + [7, 8], prefix + [9]
    engine.add_request(first, GREEDY, req_id="first")
    assert run_all(engine)["first"] == hf_greedy(hf, first, GREEDY.max_tokens)
    engine.add_request(second, GREEDY, req_id="second")
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.finished]
    assert outputs[0].num_cached_tokens == 20  # 5 full blocks of the 21-token shared prefix
    assert outputs[0].token_ids == hf_greedy(hf, second, GREEDY.max_tokens)


def test_long_prompt_prefilled_in_chunks_matches(tiny_llama):
    folder, hf = tiny_llama
    engine = make_engine(folder, max_num_batched_tokens=8, block_size=4)
    prompts = prompts_of([37, 3], seed=3)
    engine.add_request(prompts[0], GREEDY, req_id="long")
    engine.add_request(prompts[1], GREEDY, req_id="short")
    chunks, schedule = [], engine.backend.scheduler.schedule

    def recording_schedule():
        out = schedule()
        chunks.append({r.req_id: n for r, n in out.scheduled})
        return out

    engine.backend.scheduler.schedule = recording_schedule
    results = run_all(engine)
    assert [c["long"] for c in chunks[:5]] == [8, 8, 8, 8, 5]  # 37 prompt tokens in 5 chunks
    assert chunks[4]["short"] == 3  # joins in the budget the last chunk leaves
    assert results["long"] == hf_greedy(hf, prompts[0], GREEDY.max_tokens)
    assert results["short"] == hf_greedy(hf, prompts[1], GREEDY.max_tokens)


def test_preemption_recomputes_and_matches(tiny_llama):
    folder, hf = tiny_llama
    # 2 (k, v) x 2 layers x 2 kv heads x 16 dims x 4 tokens x 4 bytes = 2 KiB per block: 12 blocks.
    engine = make_engine(folder, block_size=4, kv_cache_memory=12 * 2048, enable_prefix_caching=False)
    prompts = prompts_of([10, 11, 12], seed=4)
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(p, params, req_id=str(i))
    results = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                results[out.req_id] = out.token_ids
    assert engine.backend.scheduler.num_preemptions > 0
    for i, p in enumerate(prompts):
        assert results[str(i)] == hf_greedy(hf, p, 20)
    assert engine.backend.kv_cache.num_free_blocks == engine.backend.kv_cache.num_blocks


@pytest.mark.parametrize("arch", ["qwen2", "mistral-sliding-window", "llama-untied-llama3-rope"])
def test_other_architectures_match_through_the_engine(tmp_path, arch):
    from tests.conftest import make_tiny_model

    hf = make_tiny_model(tmp_path, arch)
    engine = make_engine(tmp_path, block_size=4, max_num_batched_tokens=16)
    prompts = prompts_of([30, 6], seed=5)
    for i, p in enumerate(prompts):
        engine.add_request(p, GREEDY, req_id=str(i))
    results = run_all(engine)
    for i, p in enumerate(prompts):
        assert results[str(i)] == hf_greedy(hf, p, GREEDY.max_tokens)
