"""Adapters made with PEFT on a tiny random Llama (float32), and PEFT's own model as the reference."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from polyhead.engine.core.params import SamplingParams
from tests.conftest import make_tiny_model

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=0)

# name -> LoraConfig options; each covers a different subset of targets, rank and scaling
ADAPTERS = {
    "qv": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "all": {"r": 8, "lora_alpha": 16, "use_rslora": True,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
    "mlp": {"r": 16, "lora_alpha": 8, "target_modules": ["gate_proj", "up_proj", "down_proj"]},
    "ko": {"r": 2, "lora_alpha": 4, "target_modules": ["k_proj", "o_proj"], "rank_pattern": {"o_proj": 6},
           "alpha_pattern": {"k_proj": 3}},
}


def make_adapter(base_folder, out_folder, seed: int = 0, std: float = 0.2, **options):
    """Save a PEFT adapter with random non-zero lora_B (PEFT initializes B to zero) into out_folder."""
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**options))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    peft_model.save_pretrained(out_folder)
    return out_folder


def peft_reference(base_folder, adapter_folder):
    """transformers + PeftModel: the reference our output must equal."""
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter_folder).eval()


@pytest.fixture(scope="session")
def lora_base(tmp_path_factory):
    """A tiny random Llama's folder (its own: PEFT wraps the modules of models built from it)."""
    folder = tmp_path_factory.mktemp("lora-base")
    make_tiny_model(folder, "llama", seed=3)
    return folder


@pytest.fixture(scope="session")
def adapters(lora_base, tmp_path_factory):
    """name -> adapter folder, one per entry of ADAPTERS."""
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(lora_base, root / name, seed=i, **options)
            for i, (name, options) in enumerate(ADAPTERS.items())}


@pytest.fixture(scope="session")
def references(lora_base, adapters):
    """name -> PEFT reference model; None -> the plain transformers model."""
    refs = {name: peft_reference(lora_base, folder) for name, folder in adapters.items()}
    refs[None] = AutoModelForCausalLM.from_pretrained(lora_base, dtype=torch.float32).eval()
    return refs


def reference_greedy(model, prompt: list[int], num_new: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and their log-probs, one full forward per token (no cache to go wrong)."""
    ids, logprobs = list(prompt), []
    with torch.no_grad():
        for _ in range(num_new):
            row = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            ids.append(int(row.argmax()))
            logprobs.append(float(row.max()))
    return ids[len(prompt):], logprobs


def run_until_done(engine) -> dict[str, tuple[list[int], list[float]]]:
    """Step until every request is done; req_id -> (tokens, their log-probs)."""
    results = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                assert out.error is None, out.error
                results[out.req_id] = (out.token_ids, [lp.logprob for lp in out.logprobs or []])
    return results
