"""`polyhead serve --tasks`: one engine per backbone from the manifest, per-backbone KV budgets,
and clear errors for a bad manifest or flag."""

import pytest

from polyhead.cli import build_parser, build_task_registry, main
from tests.server.task_fixtures import MODEL, bert, manifest_dir  # noqa: F401 - fixtures


def serve_args(*argv):
    return build_parser().parse_args(["serve", *argv])


def test_a_manifest_builds_one_engine_per_backbone(manifest_dir, tiny_llama, bert):  # noqa: F811
    args = serve_args("--model", str(tiny_llama[0]), "--served-model-name", MODEL, "--tasks", str(manifest_dir[1]),
                      "--dtype", "float32", "--kv-cache-memory", "16MiB", "--max-model-len", "128",
                      "--backbone-kv-cache-memory", f"{MODEL}=4MiB", "--backbone-threads", f"{bert[0]}=2")
    registry = build_task_registry(args, MODEL)
    try:
        assert list(registry.backbones) == [MODEL, str(bert[0])]
        llama = registry.backbones[MODEL].engine.engine
        # a block: keys and values x 2 layers x 2 KV heads x head dim 16 x 16 tokens x 4 bytes = 8 KiB
        assert llama.kv_cache.num_blocks == (4 << 20) // (2 * 2 * 2 * 16 * 16 * 4)  # 4MiB, not --kv-cache-memory
        assert registry.backbones[str(bert[0])].engine.engine.max_model_len == 32  # the encoder's own limit
        assert registry.tasks["shout-lora"].adapter == "shout-lora" and "sentiment" in llama.heads
        assert registry.backbones[str(bert[0])].engine.engine.config.num_threads == 2  # --backbone-threads
        assert llama.config.num_threads is None  # the default backbone keeps torch's default
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
