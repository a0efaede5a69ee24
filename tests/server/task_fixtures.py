"""A live multi-task server on tiny random models: a tiny Llama (generate, classify with a head,
zero-shot classify, tag) and a tiny BERT (embed), each backbone with its own engine."""

from contextlib import contextmanager

import pytest
import torch
import yaml

from polyhead.config import EngineConfig
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.engine.client.process_engine import ProcessEngine
from polyhead.engine.factory import build_engine
from polyhead.models.heads import ClassifyHead, TagHead, save_head
from polyhead.models.registry import is_encoder_model
from polyhead.server.app import ServerSettings, build_app
from polyhead.server.registry import TaskRegistry
from polyhead.tasks.manifest import load_manifest
from tests.conftest import make_tiny_encoder, serve_in_thread

MODEL = "tiny"
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SHARED = "Review of a product that arrived yesterday. Text: "  # a prefix longer than one KV block


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny random BERT with a sentence-transformers pipeline (mean pooling, normalized)."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    return folder, make_tiny_encoder(folder, "bert", sentence={"normalize": True})


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory, tiny_llama, bert):
    folder = tmp_path_factory.mktemp("manifest")
    return folder, write_manifest(folder, tiny_llama[0], bert[0])


def write_manifest(folder, llama_folder, bert_folder) -> str:
    torch.manual_seed(1)
    save_head(ClassifyHead(64, 3), folder / "sentiment.safetensors")
    head = TagHead(64, len(TAGS))
    with torch.no_grad():
        head.linear.weight.mul_(20)  # confident tags, so spans form
    save_head(head, folder / "ner.safetensors")
    from tests.lora.conftest import make_adapter

    make_adapter(llama_folder, folder / "adapter", seed=5, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    tasks = [
        {"name": "chat", "kind": "generate"},
        {"name": "shout", "kind": "generate", "prompt_template": "Say loudly: {input}",
         "sampling": {"max_tokens": 5, "temperature": 0.0}},
        {"name": "shout-lora", "kind": "generate", "prompt_template": "Say loudly: {input}", "adapter": "adapter",
         "sampling": {"max_tokens": 5, "temperature": 0.0}},
        {"name": "sentiment", "kind": "classify", "labels": ["neg", "neu", "pos"], "head": "sentiment.safetensors",
         "prompt_template": SHARED + "{input}"},
        {"name": "yesno", "kind": "classify", "labels": ["yes", "no"], "verbalizers": {"yes": " yes", "no": " no way"},
         "prompt_template": SHARED + "{input} Answer:"},
        {"name": "ner", "kind": "tag", "labels": TAGS, "head": "ner.safetensors"},
        {"name": "embed", "kind": "embed", "backbone": str(bert_folder), "pooling": "mean", "normalize": True},
        {"name": "embed-llm", "kind": "embed", "pooling": "last"},
    ]
    path = folder / "tasks.yaml"
    path.write_text(yaml.safe_dump({"tasks": tasks}))
    return path


def tiny_engine(model_folder, max_model_len: int | None = None, mode: str = "thread"):
    """The tiny model's engine on a thread here, or (mode "process", decoders only) in a child process."""
    config = EngineConfig(model=str(model_folder), dtype="float32", kv_cache_memory="16MiB",
                          max_model_len=max_model_len, max_num_batched_tokens=128)
    if mode == "process" and not is_encoder_model(config.model):
        return ProcessEngine.from_config(config)
    return AsyncEngine(build_engine(config))


@contextmanager
def running_task_server(manifest, llama_folder, mode: str = "thread", **settings):
    def make_engine(model):
        return tiny_engine(llama_folder, 128, mode) if model is None else tiny_engine(model, mode=mode)

    registry = TaskRegistry.from_specs(load_manifest(manifest), make_engine, MODEL)
    settings.setdefault("default_max_tokens", 8)
    app = build_app(registry.backbones[MODEL].engine, ServerSettings(model_names=[MODEL], **settings), registry)
    try:
        with serve_in_thread(app) as url:
            yield url, app
    finally:
        registry.stop()
