"""Reading PEFT adapter folders: every unsupported or mismatched adapter is a ValueError that
names the field, the tensor or the limit, raised when the adapter is registered."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from polyhead.lora.adapter import check_adapter, read_adapter_config
from polyhead.models.config import ModelConfig
from tests.lora.conftest import make_adapter


@pytest.fixture(scope="module")
def model_config(lora_base):
    from transformers import AutoConfig

    return ModelConfig.from_hf(AutoConfig.from_pretrained(lora_base))


def edited(adapters, tmp_path, name="all", config=None, tensors=None):
    """A copy of a good adapter with its config updated and/or its tensors replaced."""
    folder = tmp_path / "edited"
    shutil.copytree(adapters[name], folder)
    if config is not None:
        raw = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**raw, **config}))
    if tensors is not None:
        save_file(tensors(load_file(folder / "adapter_model.safetensors")), folder / "adapter_model.safetensors")
    return folder


def test_good_adapters_pass(adapters, model_config):
    for folder in adapters.values():
        check_adapter(folder, model_config, max_rank=64)
    config = read_adapter_config(adapters["all"])
    assert config.use_rslora and config.scale("model.layers.0.self_attn.q_proj", 8) == 16 / 8 ** 0.5
    config = read_adapter_config(adapters["ko"])
    assert config.scale("model.layers.0.self_attn.k_proj", 2) == 3 / 2
    assert config.rank("model.layers.1.self_attn.o_proj") == 6


@pytest.mark.parametrize("update, message", [
    ({"use_dora": True}, "use_dora=True is not supported"),
    ({"bias": "all"}, "bias='all' is not supported"),
    ({"lora_bias": True}, "lora_bias=True is not supported"),
    ({"modules_to_save": ["score"]}, r"modules_to_save=\['score'\] is not supported"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out=True is not supported"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, r"target_modules \['embed_tokens'\] are not supported"),
    ({"target_modules": ["lm_head"]}, r"target_modules \['lm_head'\] are not supported"),
    ({"peft_type": "IA3"}, "peft_type 'IA3' is not supported"),
    ({"r": 0}, "r must be a number > 0"),
    ({"r": 4}, r"has lora_A \[8, \d+\] and lora_B \[\d+, 8\]; the base model needs .* with r = 4"),
])
def test_unsupported_configs_name_the_field(adapters, model_config, tmp_path, update, message):
    with pytest.raises(ValueError, match=message):
        check_adapter(edited(adapters, tmp_path, config=update), model_config, max_rank=64)


def test_tensor_problems_name_the_tensor(adapters, model_config, tmp_path):
    a_key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"

    def drop_b(t):
        return {k: v for k, v in t.items() if k != a_key.replace("lora_A", "lora_B")}

    with pytest.raises(ValueError, match="has lora_A but not both"):
        check_adapter(edited(adapters, tmp_path / "1", tensors=drop_b), model_config, max_rank=64)

    def add_embedding(t):
        return {**t, "base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(8, 259)}

    with pytest.raises(ValueError, match="lora_embedding_A' is not a LoRA A/B weight"):
        check_adapter(edited(adapters, tmp_path / "2", tensors=add_embedding), model_config, max_rank=64)

    def add_layer(t):
        b_key = a_key.replace("lora_A", "lora_B")
        return {**t, a_key.replace("layers.0", "layers.7"): t[a_key].clone(),
                b_key.replace("layers.0", "layers.7"): t[b_key].clone()}

    with pytest.raises(ValueError, match="is for layer 7, but the model has 2 layers"):
        check_adapter(edited(adapters, tmp_path / "3", tensors=add_layer), model_config, max_rank=64)

    with pytest.raises(ValueError, match="has rank 16, above max_lora_rank 8"):
        check_adapter(adapters["mlp"], model_config, max_rank=8)


def test_adapter_for_another_base_model_is_refused(lora_base, model_config, tmp_path):
    """Same hidden size, different MLP width: only the MLP shapes give it away."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(lora_base)
    config.intermediate_size = 96
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "other-base")
    folder = make_adapter(tmp_path / "other-base", tmp_path / "adapter", r=4, lora_alpha=4,
                          target_modules=["down_proj"])
    with pytest.raises(ValueError, match=r"mlp.down_proj has lora_A \[4, 96\].*needs lora_A \[r, 128\]"):
        check_adapter(folder, model_config, max_rank=64)


def test_missing_files(adapters, model_config, tmp_path):
    with pytest.raises(ValueError, match="has no adapter_config.json"):
        check_adapter(tmp_path, model_config, max_rank=64)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        check_adapter(tmp_path, model_config, max_rank=64)
    folder = edited(adapters, tmp_path / "x")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="has no adapter_model.safetensors"):
        check_adapter(folder, model_config, max_rank=64)


def test_benchmark_adapters_are_valid_peft_folders(lora_base, model_config, tmp_path):
    """The step benchmark's random adapters (polyhead/bench/lora.py) load as PEFT's own do."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from polyhead.bench.lora import write_random_adapter

    folder = write_random_adapter(tmp_path / "bench", model_config, rank=8, seed=0)
    assert check_adapter(folder, model_config, max_rank=8).r == 8
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lora_base), folder)
    assert sum("lora_B" in name for name, _ in model.named_parameters()) == 7 * model_config.num_layers
