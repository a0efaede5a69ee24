"""`polyhead quantize`: the folder it writes loads as it is (auto), serves the same tokens as
quantizing at load, is a fraction of the float size, and bad arguments name the flag."""

import json
import subprocess
import sys

import pytest
import torch

from polyhead.compress.quantize import folder_bytes, quantize_folder
from polyhead.llm import LLM
from polyhead.quant.attach import QuantizationSpec
from polyhead.quant.linear import QuantizedLinear
from tests.conftest import make_engine, make_tiny_model

PROMPTS = [[5, 17, 99, 3, 250, 41], list(range(30, 70))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantize-src")
    make_tiny_model(folder, "qwen2", seed=2)  # untied LM head and q/k/v biases
    return folder


def greedy(engine):
    from polyhead.engine.core.params import SamplingParams

    outs = LLM.from_engine(engine).generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))
    return [o.token_ids for o in outs]


@pytest.mark.parametrize("method,spec", [("int8", QuantizationSpec(8, 32)), ("int4", QuantizationSpec(4, 32))])
def test_written_folder_serves_what_quantizing_at_load_serves(tiny, tmp_path, method, spec):
    out = quantize_folder(str(tiny), spec, tmp_path / "q")
    config = json.loads((out / "config.json").read_text())
    assert config["polyhead_quantization"]["bits"] == spec.bits
    assert folder_bytes(out) < folder_bytes(tiny) * (0.4 if spec.bits == 8 else 0.3)
    kept = make_engine(out, quantization="auto")
    assert all(not isinstance(m, torch.nn.Linear) for m in kept.backend.model.modules())
    assert any(isinstance(m, QuantizedLinear) for m in kept.backend.model.modules())
    assert greedy(kept) == greedy(make_engine(tiny, quantization=method))
    # none dequantizes what the folder stores: the same tokens from float weights
    assert greedy(make_engine(out, quantization="none")) == greedy(kept)


def test_asymmetric_int4_and_group_size(tiny, tmp_path):
    out = quantize_folder(str(tiny), QuantizationSpec(4, 64, symmetric=False), tmp_path / "q")
    engine = make_engine(out)
    layer = engine.backend.model.model.layers[0].mlp.down_proj
    assert layer.weight_q.group_size == 64 and layer.weight_q.mins is not None


def test_cli_and_its_errors(tiny, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "polyhead.cli", "quantize", *args], capture_output=True,
                              text=True, timeout=300, check=False)

    ok = cli(str(tiny), "--method", "int4", "--group-size", "64", "--output", str(tmp_path / "out"))
    assert ok.returncode == 0, ok.stderr
    assert "int4-g64" in ok.stdout and (tmp_path / "out" / "quantized.safetensors").is_file()
    again = cli(str(tiny), "--method", "int4", "--output", str(tmp_path / "out"))
    assert again.returncode != 0 and "--output" in again.stderr and "not an empty folder" in again.stderr
    bad = cli(str(tiny), "--method", "int8", "--asymmetric", "--output", str(tmp_path / "x"))
    assert bad.returncode != 0 and "--asymmetric applies to --method int4" in bad.stderr
    bad = cli(str(tiny), "--method", "int4", "--group-size", "channel", "--output", str(tmp_path / "x"))
    assert bad.returncode != 0 and "--group-size channel applies to --method int8" in bad.stderr
    twice = cli(str(tmp_path / "out"), "--method", "int8", "--output", str(tmp_path / "y"))
    assert twice.returncode != 0 and "already quantized (int4-g64)" in twice.stderr


def test_training_refuses_a_quantized_folder_by_name(tiny, tmp_path):
    from polyhead.train.model import resolve_backbone_folder

    out = quantize_folder(str(tiny), QuantizationSpec(8, None), tmp_path / "q")
    with pytest.raises(ValueError, match="is a `polyhead quantize` folder: training needs the float weights"):
        resolve_backbone_folder(str(out))
