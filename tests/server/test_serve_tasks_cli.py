"""`polyhead serve --tasks`: one engine per backbone from the manifest, per-backbone KV budgets,
and clear errors for a bad manifest or flag."""

import pytest

from polyhead.cli import build_parser, build_task_registry, main
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.engine.client.process_engine import ProcessEngine
from tests.server.task_fixtures import MODEL, bert, manifest_dir  # noqa: F401 - fixtures


def serve_args(*argv):
    return build_parser().parse_args(["serve", *argv])


@pytest.mark.parametrize(("mode", "encoder_mode"), [("auto", "auto"), ("process", "process"), ("thread", "thread"),
                                                  ("process", "thread"), ("thread", "process")])
def test_a_manifest_builds_one_engine_per_backbone(manifest_dir, tiny_llama, bert, mode, encoder_mode):  # noqa: F811
    args = serve_args("--model", str(tiny_llama[0]), "--served-model-name", MODEL, "--tasks", str(manifest_dir[1]),
                      "--dtype", "float32", "--kv-cache-memory", "16MiB", "--max-model-len", "128",
                      "--backbone-kv-cache-memory", f"{MODEL}=4MiB", "--backbone-threads", f"{bert[0]}=2",
                      "--engine-mode", mode, *(["--backbone-engine-mode", f"{bert[0]}={encoder_mode}"]
                                               if encoder_mode != mode else []))
    registry = build_task_registry(args, MODEL)
    try:
        assert list(registry.backbones) == [MODEL, str(bert[0])]
        llama = registry.backbones[MODEL].engine
        encoder = registry.backbones[str(bert[0])].engine
        # auto: the decoder in a child process, the encoder on a thread (--backbone-engine-mode per backbone)
        mode = {"auto": "process"}.get(mode, mode)
        encoder_mode = {"auto": "thread"}.get(encoder_mode, encoder_mode)
        assert isinstance(llama, ProcessEngine if mode == "process" else AsyncEngine)
        assert isinstance(encoder, ProcessEngine if encoder_mode == "process" else AsyncEngine)
        # a block: keys and values x 2 layers x 2 KV heads x head dim 16 x 16 tokens x 4 bytes = 8 KiB
        num_blocks = (4 << 20) // (2 * 2 * 2 * 16 * 16 * 4)  # 4MiB, not --kv-cache-memory
        limits = llama.rules  # the backbone's request rules, in either mode
        assert limits.kv_capacity_tokens == num_blocks * 16
        assert encoder.rules.max_model_len == 32  # the encoder's own limit
        heads = llama.heads if mode == "process" else llama.engine.heads
        assert registry.tasks["shout-lora"].adapter == "shout-lora" and "sentiment" in heads
        encoder_config = encoder.config if encoder_mode == "process" else encoder.engine.backend.config
        assert encoder_config.num_threads == 2  # --backbone-threads
        config = llama.config if mode == "process" else llama.engine.backend.config
        assert config.num_threads is None  # the default backbone keeps torch's default
    finally:
        registry.stop()


def test_bad_manifest_and_flags_are_clear_errors(tmp_path, capsys):
    assert main(["serve", "--tasks", str(tmp_path / "missing.yaml")]) == 2
    assert "no such manifest file" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("tasks:\n  - {name: x, kind: classify}\n")
    assert main(["serve", "--tasks", str(tmp_path / "bad.yaml")]) == 2
    assert "task 'x': a classify task needs labels" in capsys.readouterr().err
    with pytest.raises(ValueError, match="NAME=SIZE"):
        build_task_registry(serve_args("--tasks", "default", "--backbone-kv-cache-memory", "64MiB"), MODEL)
    with pytest.raises(ValueError, match="NAME=N with N >= 1"):
        build_task_registry(serve_args("--tasks", "default", "--backbone-threads", "all-MiniLM-L6-v2=0"), MODEL)
    with pytest.raises(ValueError, match=r"NAME=auto\|thread\|process"):
        build_task_registry(serve_args("--tasks", "default", "--backbone-engine-mode", "all-MiniLM-L6-v2=fork"),
                            MODEL)
