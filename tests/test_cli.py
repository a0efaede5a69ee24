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
         "--dtype", "float32", "--kv-cache-memory", "64MiB"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
