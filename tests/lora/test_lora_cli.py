"""Adapters from the command line: --lora-modules registers them, --adapter picks one."""

from polyhead.cli import main
from polyhead.engine.core.params import SamplingParams
from polyhead.llm import LLM


def run_args(lora_base, adapters, *extra):
    return ["run", "--raw", "hello there", "--max-tokens", "6", "--model", str(lora_base), "--dtype", "float32",
            "--kv-cache-memory", "16MiB", "--lora-modules", f"qv={adapters['qv']}", f"mlp={adapters['mlp']}",
            "--max-loras", "1", "--greedy", *extra]


def test_run_with_an_adapter_answers_as_the_engine_does(lora_base, adapters, capsys):
    assert main(run_args(lora_base, adapters, "--adapter", "mlp")) == 0
    out = capsys.readouterr().out
    llm = LLM(model=str(lora_base), dtype="float32", kv_cache_memory="16MiB", adapters={"mlp": str(adapters["mlp"])})
    params = SamplingParams(temperature=0.0, max_tokens=6)
    expected = llm.generate("hello there", params, adapter="mlp")[0].text
    assert out == expected + "\n"
    assert expected != llm.generate("hello there", params)[0].text


def test_bad_lora_options_are_clear_errors(lora_base, adapters, capsys):
    assert main(run_args(lora_base, adapters, "--adapter", "sql")) == 2
    assert "adapter 'sql' is not registered (registered adapters: mlp, qv)" in capsys.readouterr().err
    assert main(run_args(lora_base, adapters, "--lora-modules", "qv")) == 2
    assert "--lora-modules takes NAME=FOLDER, got 'qv'" in capsys.readouterr().err
    assert main(run_args(lora_base, adapters, "--max-lora-rank", "8")) == 2
    assert "has rank 16, above max_lora_rank 8" in capsys.readouterr().err
