"""Quantized backbones through the whole engine: greedy output equals transformers on the
dequantized twin token for token (float32); LoRA adapters and task heads still apply; `auto`
leaves float folders float."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.llm import LLM
from polyhead.models.heads import ClassifyHead
from polyhead.quant.linear import QuantizedEmbedding, QuantizedLinear
from tests.conftest import make_engine, make_tiny_model
from tests.lora.conftest import make_adapter, peft_reference, reference_greedy, run_until_done
from tests.quant.conftest import dequantized_twin

PROMPTS = [[5, 17, 99, 3, 250, 41], [120, 7], list(range(30, 70))]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=0)
SPECS = {"int8": (8, 32), "int8-channel": (8, None), "int4": (4, 32), "int4-g128": (4, 128)}
OPTIONS = {"int8": {"quantization": "int8"}, "int8-channel": {"quantization": "int8", "quantization_group_size": None},
           "int4": {"quantization": "int4"}, "int4-g128": {"quantization": "int4", "quantization_group_size": 128}}


@pytest.fixture(scope="module", params=["llama", "qwen2", "llama-untied-llama3-rope"])
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"quant-{request.param}")
    make_tiny_model(folder, request.param, seed=5)
    return folder


def greedy(engine, prompts) -> list[list[int]]:
    return [o.token_ids for o in LLM.from_engine(engine).generate(prompts, GREEDY)]


@pytest.mark.parametrize("quantization", list(SPECS))
def test_greedy_equals_transformers_on_the_dequantized_twin(tiny, tmp_path, quantization):
    bits, group = SPECS[quantization]
    reference = AutoModelForCausalLM.from_pretrained(dequantized_twin(tiny, tmp_path / "twin", bits, group)).eval()
    engine = make_engine(tiny, max_num_batched_tokens=16, **OPTIONS[quantization])  # chunked prefill too
    modules = list(engine.backend.model.modules())
    assert any(isinstance(m, QuantizedLinear) for m in modules) and any(isinstance(m, QuantizedEmbedding)
                                                                      for m in modules)
    assert not any(isinstance(m, torch.nn.Linear) for m in modules)  # every linear, the LM head included
    tokens = greedy(engine, PROMPTS)
    for prompt, got in zip(PROMPTS, tokens):
        assert got == reference_greedy(reference, prompt, 12)[0]


def test_auto_leaves_a_float_folder_float(tiny):
    engine = make_engine(tiny, quantization="auto")
    assert not any(isinstance(m, QuantizedLinear | QuantizedEmbedding) for m in engine.backend.model.modules())


def test_tied_embedding_and_lm_head_hold_one_weight(tiny):
    engine = make_engine(tiny, quantization="int4")
    model = engine.backend.model
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight_q is model.model.embed_tokens.weight_q
        assert model.lm_head.weight_q.bits == 8  # the embedding stays 8-bit under int4
    else:
        assert model.lm_head.weight_q.bits == 4


# how far a quantized backbone may move this tiny random model's chosen log-probs from the float
# one's (nats; its weights are far rougher to round than a trained model's)
FLOAT_DRIFT = {"int8": 0.3, "int4": 2.5}  # measured: 0.21 and 2.13


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_lora_on_a_quantized_backbone(tmp_path, quantization):
    base = tmp_path / "base"
    make_tiny_model(base, "llama", seed=3)
    adapter = make_adapter(base, tmp_path / "adapter", seed=1, r=8, lora_alpha=16,
                           target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"])
    exact = peft_reference(dequantized_twin(base, tmp_path / "twin", *SPECS[quantization]), adapter)
    floats = peft_reference(base, adapter)
    engine = make_engine(base, quantization=quantization, adapters={"a": str(adapter)})
    for i, prompt in enumerate([PROMPTS[0], PROMPTS[2]]):
        engine.add_request(prompt, GREEDY, req_id=f"r{i}", adapter="a")
    results = run_until_done(engine)
    for i, prompt in enumerate([PROMPTS[0], PROMPTS[2]]):
        tokens, logprobs = results[f"r{i}"]
        ref_tokens, ref_logprobs = reference_greedy(exact, prompt, 12)
        assert tokens == ref_tokens  # exact against PEFT on the dequantized backbone
        torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(ref_logprobs), atol=1e-4, rtol=1e-4)
        # and near the float backbone's
        with torch.no_grad():
            all_logprobs = torch.log_softmax(floats(input_ids=torch.tensor([prompt + tokens])).logits[0], -1)
        chosen = all_logprobs[torch.arange(len(prompt) - 1, len(prompt) + len(tokens) - 1), tokens]
        assert (chosen - torch.tensor(logprobs)).abs().max() < FLOAT_DRIFT[quantization]


def test_classify_head_on_a_quantized_backbone(tiny):
    torch.manual_seed(0)
    head = ClassifyHead(64, 3)
    probabilities = {}
    for quantization in ("none", "int8"):
        engine = make_engine(tiny, quantization=quantization)
        engine.register_head("topic", head)
        engine.add_request(PROMPTS[2], PoolingParams("classify", task="topic"), req_id="r")
        while engine.has_unfinished_requests():
            for out in engine.step():
                assert out.error is None, out.error
                probabilities[quantization] = torch.tensor(out.pooled)
    assert probabilities["none"].shape == probabilities["int8"].shape == (3,)
    # int8 per channel moves this tiny model's class probabilities by < 0.05
    assert (probabilities["none"] - probabilities["int8"]).abs().max() < 0.05


def test_bad_quantization_settings_name_the_field():
    from polyhead.config import EngineConfig

    with pytest.raises(ValueError, match="quantization must be one of auto, none, int8, int4; got 'int3'"):
        EngineConfig(quantization="int3")
    with pytest.raises(ValueError, match="quantization_group_size must be one of 32, 64, 128 or None"):
        EngineConfig(quantization="int4", quantization_group_size=48)
    with pytest.raises(ValueError, match="None \\(per output channel\\) is for int8"):
        EngineConfig(quantization="int4", quantization_group_size=None)


def test_group_size_flag_parses_channel():
    from polyhead.quant.flags import parse_group_size

    assert parse_group_size("channel") is None and parse_group_size("64") == 64
    with pytest.raises(Exception, match="must be 32, 64, 128 or channel"):
        parse_group_size("16")
