"""`polyhead bench agreement`: common prefixes of greedy generations against a float32 reference."""

import json

import torch

from polyhead.bench.agreement import PROMPTS, common_prefix, compare, generate_greedy
from polyhead.cli import main
from polyhead.config import EngineConfig
from tests.conftest import make_tiny_model

TOKENS = 16


def config(folder) -> EngineConfig:
    return EngineConfig(model=str(folder), dtype="float32", quantization="none", kv_cache_memory="16MiB")


def perturbed_copy(source_model, folder, scale: float = 0.3):
    """The tiny model with noise on every weight, saved beside its tokenizer."""
    from tests.conftest import tiny_tokenizer

    torch.manual_seed(1)
    with torch.no_grad():
        for param in source_model.parameters():
            param.add_(torch.randn_like(param) * scale * param.std())
    source_model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)


def test_common_prefix_and_summary():
    assert common_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert common_prefix([5, 6], [5, 6]) == 2 and common_prefix([5], [6]) == 0
    result = compare([[1, 2, 3], [1, 2, 3], [4, 5, 6]], [[1, 2, 3], [1, 9, 3], [7, 5, 6]], 3)
    assert result.prefix_lengths == [3, 1, 0] and result.num_identical == 1
    assert (result.mean, result.min, result.median) == (4 / 3, 0, 1)


def test_config_against_itself_agrees_fully(tiny_llama):
    folder, _ = tiny_llama
    reference = generate_greedy(config(folder), 6, TOKENS, raw=False)
    result = compare(reference, generate_greedy(config(folder), 6, TOKENS, raw=False), TOKENS)
    assert all(len(ids) == TOKENS for ids in reference)  # EOS ignored: every row has the full length
    assert len({tuple(ids) for ids in reference}) > 1  # the prompts differ, so do the generations
    assert result.prefix_lengths == [TOKENS] * 6 and result.num_identical == 6 and result.mean == TOKENS


def test_perturbed_model_agrees_less(tmp_path):
    original, perturbed = tmp_path / "original", tmp_path / "perturbed"
    perturbed_copy(make_tiny_model(original), perturbed)
    reference = generate_greedy(config(original), 8, TOKENS, raw=False)
    result = compare(reference, generate_greedy(config(perturbed), 8, TOKENS, raw=False), TOKENS)
    assert result.mean < TOKENS and result.min < TOKENS and result.num_identical < 8


def test_cli_reports_against_a_reference_model(tmp_path, capsys):
    original, perturbed = tmp_path / "original", tmp_path / "perturbed"
    perturbed_copy(make_tiny_model(original), perturbed)
    out = tmp_path / "agreement.json"
    argv = ["bench", "agreement", "--model", str(perturbed), "--reference-model", str(original), "--dtype",
            "float32", "--prompts", "4", "--tokens", str(TOKENS), "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert len(report["prefix_lengths"]) == 4 and report["num_tokens"] == TOKENS and report["mean"] < TOKENS
    assert f"mean common prefix {report['mean']:.1f} of {TOKENS} tokens" in printed
    assert "command: polyhead bench agreement" in printed and "--reference-model" in report["command"]
    assert main(["bench", "agreement", "--prompts", str(len(PROMPTS) + 1)]) == 2  # named limit, no traceback
