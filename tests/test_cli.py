"""The `polyhead` command: help texts, a streamed answer, and clear errors."""

import subprocess
import sys

import pytest

from polyhead.cli import main


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["bench", "--help"], ["bench", "offline", "--help"]])
def test_help_texts(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: polyhead") and "--help" in out


def test_bad_option_is_a_clear_error(capsys):
    assert main(["run", "hi", "--model", "/no/such/model"]) == 2
    assert "polyhead: error: model '/no/such/model' not found" in capsys.readouterr().err


@pytest.mark.model
def test_run_streams_an_answer_from_the_default_model():
    result = subprocess.run(
        [sys.executable, "-m", "polyhead.cli", "run", "--raw", "The capital of France is", "--max-tokens", "6",
         "--greedy", "--dtype", "float32", "--kv-cache-memory", "64MiB"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


@pytest.fixture(scope="module")
def tiny_with_generation_config(tmp_path_factory):
    import json

    from tests.conftest import make_tiny_model

    folder = tmp_path_factory.mktemp("tiny-genconfig")
    make_tiny_model(folder)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "temperature": 0.3, "top_k": 7}))
    return folder


RUN = ["run", "--raw", "hi", "--max-tokens", "3", "--dtype", "float32", "--kv-cache-memory", "4MiB", "--verbose"]


def test_run_samples_with_the_models_generation_config_and_says_so(tiny_with_generation_config, capsys):
    assert main(RUN + ["--model", str(tiny_with_generation_config), "--top-p", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "sampling temperature=0.3, top_p=0.5, top_k=7, min_p=0.0, repetition_penalty=1.1" in err
    assert "(flags, then the model's generation_config.json)" in err


def test_run_without_a_generation_config_uses_polyheads_defaults(tiny_with_generation_config, capsys):
    assert main(RUN + ["--model", str(tiny_with_generation_config), "--generation-config", "none"]) == 0
    assert ("sampling temperature=0.7, top_p=0.9, top_k=0, min_p=0.0, repetition_penalty=1.1, max_tokens=3, "
            "seed=None (polyhead's defaults for run)") in capsys.readouterr().err


def test_greedy_is_one_flag_away(tiny_with_generation_config, capsys):
    assert main(RUN + ["--model", str(tiny_with_generation_config), "--greedy"]) == 0
    assert "sampling temperature=0.0," in capsys.readouterr().err


def test_a_generation_config_run_cannot_use_is_a_clear_error(tmp_path):
    from polyhead.models.generation_config import read_generation_defaults

    (tmp_path / "generation_config.json").write_text('{"top_p": 0}')
    with pytest.raises(ValueError, match="generation_config.json: top_p must be in"):
        read_generation_defaults(tmp_path)
    assert read_generation_defaults(tmp_path, "none") == {}
