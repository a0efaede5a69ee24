"""The real default model (SmolLM2-135M, float32) with a random PEFT adapter: the engine's greedy
tokens equal PEFT's `generate`, in a batch that also holds a base-weights request."""

import pytest
import torch

from polyhead.config import EngineConfig
from polyhead.engine.core.engine import Engine
from polyhead.engine.core.params import SamplingParams
from polyhead.engine.decoder.backend import DecoderBackend
from tests.lora.conftest import make_adapter, peft_reference

NEW_TOKENS = 24
PROMPTS = ["The capital of France is", "Write a haiku about the sea:"]


@pytest.mark.model
def test_engine_equals_peft_greedy_on_the_default_model(default_model, tmp_path):
    folder = make_adapter(default_model.folder, tmp_path / "adapter", seed=5, std=0.05, r=8, lora_alpha=16,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    reference = peft_reference(default_model.folder, folder)
    engine = Engine(DecoderBackend(EngineConfig(dtype="float32", kv_cache_memory="64MiB", block_size=8,
                                    max_num_batched_tokens=16), loaded=default_model))
    engine.register_adapter("random", str(folder))
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    ids = [default_model.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    engine.add_request(ids[0], params, req_id="lora", adapter="random")
    engine.add_request(ids[1], params, req_id="lora-2", adapter="random")
    engine.add_request(ids[0], params, req_id="base")
    results = {}
    while engine.has_unfinished_requests():
        results.update({o.req_id: o.token_ids for o in engine.step() if o.finished})

    def greedy(model, prompt):
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                                 do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=-1, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    assert results["lora"] == greedy(reference, ids[0])
    assert results["lora-2"] == greedy(reference, ids[1])
    with reference.disable_adapter():
        assert results["base"] == greedy(reference, ids[0])
    assert results["lora"] != results["base"]  # the adapter is strong enough to change the tokens

