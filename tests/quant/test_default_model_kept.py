"""The default model in the 4 bits it ships in (its GGUF's Q4_1 blocks, Q8_0 embedding), through
the whole engine: greedy output equals transformers' on the dequantized file, token for token."""

import pytest
import torch

from polyhead.config import EngineConfig
from polyhead.engine.core.engine import Engine
from polyhead.engine.core.params import SamplingParams
from polyhead.engine.decoder.backend import DecoderBackend
from polyhead.llm import LLM
from polyhead.quant.attach import quantized_bytes
from polyhead.quant.linear import QuantizedLinear
from tests.test_default_model import NEW_TOKENS, PROMPTS

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def kept():
    config = EngineConfig(dtype="float32", quantization="auto", kv_cache_memory="64MiB", max_num_batched_tokens=16)
    return LLM.from_engine(Engine(DecoderBackend(config)))


def test_kept_q4_1_greedy_equals_transformers_on_the_dequantized_file(kept, default_model, hf_default_model):
    tokenizer = default_model.tokenizer
    outs = kept.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        with torch.no_grad():
            mask = torch.ones(1, len(ids), dtype=torch.long)
            ref = hf_default_model.generate(torch.tensor([ids]), attention_mask=mask, do_sample=False,
                                            max_new_tokens=NEW_TOKENS, eos_token_id=-1, pad_token_id=0)
        assert out.token_ids == ref[0, len(ids):].tolist(), prompt


def test_kept_weights_are_the_files_and_held_once(kept):
    model = kept.engine.backend.model
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 30 * 4 + 1  # qkv, o, gate|up, down per layer, and the LM head
    assert {m.weight_q.bits for m in layers if m is not model.lm_head} == {4}
    assert model.lm_head.weight_q is model.model.embed_tokens.weight_q and model.lm_head.weight_q.bits == 8
    assert all(m.weight_q.mins is not None for m in layers if m.weight_q.bits == 4)  # Q4_1: a min per block
    # Q4_1 is 6 bits a weight with polyhead's float32 scale and min, Q8_0 9: ~118 MB, against 538 MB in float32
    assert 100e6 < quantized_bytes(model) < 130e6
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
