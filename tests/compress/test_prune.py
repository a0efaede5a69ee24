"""Pruned models equal their masked reference (the unpruned model with the removed channels' and
heads' outputs zeroed), through polyhead's forward, transformers and the whole engine."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from polyhead.cli import main
from polyhead.compress.calibration import forward_sequence
from polyhead.compress.prune import prune_model
from polyhead.compress.spec import PruneSpec
from polyhead.compress.structured import mask_structured
from polyhead.engine.core.params import SamplingParams
from polyhead.llm import LLM
from polyhead.models.config import ModelConfig
from polyhead.models.loader import load_model
from tests.conftest import make_tiny_model

PROMPTS = [[5, 17, 99, 3, 42, 200, 7], [1, 2, 3], list(range(30, 70))]


def polyhead_logits(folder, ids):
    model = load_model(str(folder), torch.float32).model
    with torch.inference_mode():
        return model.compute_logits(forward_sequence(model, ids))


def hf_logits(folder, ids):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def masked_reference(source, result, out):
    """A copy of `source` whose weights are the masked reference of a structured prune."""
    import shutil

    shutil.copytree(source, out)
    state = load_file(source / "model.safetensors")
    config = load_model(str(source), torch.float32).config
    save_file(mask_structured(state, config, result.plan), out / "model.safetensors")
    return out


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prune-src")
    make_tiny_model(folder, "llama", num_layers=3)
    return folder


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("spec", [PruneSpec("wanda", mlp=0.25, heads=0.5),
                                  PruneSpec("magnitude", mlp=0.5, heads=0.5, allocation="global"),
                                  PruneSpec("wanda", mlp=0.7, allocation="global")],
                         ids=["uniform", "global", "mlp-only"])
def test_pruned_equals_masked_reference(tmp_path, arch, spec):
    source = tmp_path / "src"
    make_tiny_model(source, arch, num_layers=3)
    result = prune_model(str(source), spec, tmp_path / "pruned")
    reference = masked_reference(source, result, tmp_path / "masked")
    config = load_model(str(result.folder), torch.float32).config
    assert list(config.intermediate_sizes) == result.intermediate_sizes
    assert list(config.layer_num_heads) == result.num_heads
    assert sum(result.intermediate_sizes) < 3 * 128
    for ids in PROMPTS:
        expected = hf_logits(reference, ids)
        torch.testing.assert_close(polyhead_logits(result.folder, ids), expected, atol=1e-5, rtol=1e-5)
        if config.is_uniform:  # a plain Hugging Face config: transformers loads it as it is
            torch.testing.assert_close(hf_logits(result.folder, ids), expected, atol=1e-5, rtol=1e-5)


def test_engine_greedy_tokens_equal_masked_reference(tmp_path, tiny_source):
    result = prune_model(str(tiny_source), PruneSpec("wanda", mlp=0.5, heads=0.5, allocation="global"),
                         tmp_path / "pruned")
    assert len(set(result.intermediate_sizes)) > 1, "global allocation should give layers different sizes"
    reference = masked_reference(tiny_source, result, tmp_path / "masked")
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    pruned = LLM(model=str(result.folder), dtype="float32", kv_cache_memory="16MiB").generate(PROMPTS, params)
    masked = LLM(model=str(reference), dtype="float32", kv_cache_memory="16MiB").generate(PROMPTS, params)
    assert [o.token_ids for o in pruned] == [o.token_ids for o in masked]


def test_pruned_weights_are_smaller_matrices(tmp_path, tiny_source):
    result = prune_model(str(tiny_source), PruneSpec("magnitude", mlp=0.25, heads=0.5), tmp_path / "pruned")
    state = load_file(result.folder / "model.safetensors")
    assert state["model.layers.0.mlp.down_proj.weight"].shape == (64, 96)
    assert state["model.layers.0.self_attn.q_proj.weight"].shape == (2 * 16, 64)
    assert state["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 16, 64)  # KV heads kept
    before, after = result.num_parameters
    assert after < before
    block = json.loads((result.folder / "config.json").read_text())["polyhead_pruning"]
    assert block["num_kv_heads"] == [2, 2, 2] and block["method"] == "magnitude"


def test_cli_writes_a_loadable_folder(tmp_path, tiny_source, capsys):
    out = tmp_path / "cli-pruned"
    assert main(["prune", str(tiny_source), "--method", "wanda", "--structured", "mlp=0.25,heads=0.5",
                 "--output", str(out)]) == 0
    assert "MLP channels per layer: [96, 96, 96]" in capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file()
    torch.testing.assert_close(polyhead_logits(out, PROMPTS[0]), hf_logits(out, PROMPTS[0]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_two_four_has_two_zeros_in_every_group_of_four(tmp_path, tiny_source, method):
    result = prune_model(str(tiny_source), PruneSpec(method, n_m=(2, 4)), tmp_path / "sparse")
    state = load_file(result.folder / "model.safetensors")
    source = load_file(tiny_source / "model.safetensors")
    for name, weight in state.items():
        if ".layers." in name and name.endswith("proj.weight"):
            assert weight.shape == source[name].shape  # dense shapes kept
            zeros = (weight.view(weight.shape[0], -1, 4) == 0).sum(-1)
            assert (zeros == 2).all(), name
        else:
            assert torch.equal(weight, source[name]), name  # norms and embeddings untouched


def test_unstructured_zeros_that_fraction_of_every_row(tmp_path, tiny_source):
    result = prune_model(str(tiny_source), PruneSpec("wanda", unstructured=0.5), tmp_path / "sparse")
    down = load_file(result.folder / "model.safetensors")["model.layers.1.mlp.down_proj.weight"]
    assert ((down == 0).sum(1) == 64).all()  # 128 inputs per row, half zeroed


def test_wanda_and_magnitude_pick_different_channels(tmp_path):
    source = tmp_path / "src"
    make_tiny_model(source, "llama", num_layers=1)
    state = load_file(source / "model.safetensors")
    # channel 5: the largest weights reading it, but an input that is almost always ~0
    state["model.layers.0.mlp.down_proj.weight"][:, 5] *= 20
    state["model.layers.0.mlp.up_proj.weight"][5] *= 1e-4
    save_file(state, source / "model.safetensors")
    kept = {m: prune_model(str(source), PruneSpec(m, mlp=0.5), tmp_path / m).plan.channels[0].tolist()
            for m in ("magnitude", "wanda")}
    assert 5 in kept["magnitude"] and 5 not in kept["wanda"]


@pytest.mark.parametrize("flags, message", [
    (["--structured", "mlp=1.5"], "--structured mlp must be in [0, 1), got 1.5"),
    (["--structured", "heads=-0.1"], "--structured heads must be in [0, 1)"),
    (["--structured", "ffn=0.2"], "--structured takes mlp=R and/or heads=R"),
    (["--structured", "mlp=abc"], "--structured mlp: 'abc' is not a number"),
    (["--structured", "mlp=0.2", "--unstructured", "0.5"], "give exactly one of --structured"),
    ([], "give exactly one of --structured"),
    (["--unstructured", "1.0"], "--unstructured must be in [0, 1), got 1.0"),
    (["--semi-structured", "4:2"], "--semi-structured N:M needs 0 < N < M, got 4:2"),
    (["--semi-structured", "two:four"], "--semi-structured takes N:M"),
    (["--semi-structured", "2:3"], "not a multiple of 3"),
    (["--structured", "mlp=0.2", "--calibration", "/no/such/file.txt"],
     "--calibration '/no/such/file.txt' is not a file"),
])
def test_bad_arguments_name_the_flag_and_limit(tmp_path, tiny_source, capsys, flags, message):
    assert main(["prune", str(tiny_source), "--output", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_output_must_be_new_or_empty(tmp_path, tiny_source, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["prune", str(tiny_source), "--structured", "mlp=0.2", "--output", str(tmp_path / "out")]) == 2
    assert "--output" in capsys.readouterr().err and (tmp_path / "out" / "keep.txt").is_file()


def test_config_rejects_per_layer_kv_heads_and_bad_sizes():
    base = {"architecture": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 2, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 8, "rope_theta": 1e4}
    assert ModelConfig(**base, layer_num_heads=(2, 4)).layer_num_heads == (2, 4)
    with pytest.raises(ValueError, match="must be a multiple of num_kv_heads"):
        ModelConfig(**base, layer_num_heads=(3, 4))
    with pytest.raises(ValueError, match="intermediate_sizes must hold one size >= 1 per layer"):
        ModelConfig(**base, intermediate_sizes=(8,))


@pytest.mark.model
def test_default_model_prunes_and_generates(tmp_path):
    result = prune_model(None, PruneSpec("wanda", mlp=0.1, heads=0.25), tmp_path / "smol", max_tokens=256)
    assert result.intermediate_sizes == [1382] * 30 and result.num_heads == [6] * 30
    llm = LLM(model=str(result.folder), dtype="float32", kv_cache_memory="64MiB")
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0.0, max_tokens=4))[0]
    assert len(out.token_ids) == 4
