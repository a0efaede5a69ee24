"""The served tasks and the backbones they run on.

A manifest names tasks; each task names a backbone (None: the default generative one). Every
distinct backbone gets one engine (its own step loop and KV budget; a decoder's steps in a child
process by default, an encoder's on a thread here); each task's head and adapter are registered
on its backbone's engine. Everything a request needs to
know about its task at serving time is resolved here once, at start-up, with errors naming the
task.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from polyhead.engine.core.params import StructuredOutput
from polyhead.server.structured import ResponseFormat
from polyhead.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from polyhead.models.heads import EmbedPooler

logger = logging.getLogger(__name__)


@dataclass
class Backbone:
    """One model loaded once, serving every task that names it."""

    name: str  # what /v1/models lists and what a request's `model` may name
    engine: object  # its EngineClient (AsyncEngine or ProcessEngine): own step loop, own KV cache
    is_generative: bool  # a causal LM (generate, zero-shot scoring) or an encoder (pooling only)
    hidden_size: int  # width of the final hidden states the heads read
    add_special_tokens: bool  # encoders wrap inputs in their [CLS] ... [SEP]; causal LMs add nothing
    has_prefix_cache: bool  # requests sharing a prefix can reuse its KV blocks (encoders keep none)
    tasks: list[str] = field(default_factory=list)  # names of the tasks it serves

    @property
    def tokenizer(self):
        return self.engine.tokenizer


@dataclass
class ServedTask:
    """A TaskSpec bound to its backbone, with what the endpoints need already resolved."""

    spec: TaskSpec
    backbone: Backbone
    adapter: str | None  # the adapter name registered on the backbone's engine; None: base weights
    dimensions: int | None = None  # embed: length of the vector
    structured: StructuredOutput | None = None  # generate: its response_format, checked at start-up

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def card(self) -> dict:
        """What GET /v1/tasks says about it."""
        spec = self.spec
        card = {"id": spec.name, "object": "task", "kind": spec.kind, "backbone": self.backbone.name,
                "labels": list(spec.labels), "adapter": self.adapter is not None,
                "zero_shot": spec.is_zero_shot, "description": spec.description}
        if self.dimensions is not None:
            card["dimensions"] = self.dimensions
        return card


class TaskRegistry:
    def __init__(self, backbones: dict[str, Backbone], tasks: dict[str, ServedTask], default_backbone: str):
        self.backbones = backbones  # name -> Backbone; insertion order is the order /v1/models lists
        self.tasks = tasks  # name -> ServedTask
        self.default_backbone = default_backbone  # where tasks without a backbone run

    @property
    def engines(self) -> list:
        return [b.engine for b in self.backbones.values()]

    @classmethod
    def single(cls, engine, name: str) -> "TaskRegistry":
        """No manifest: one generative backbone and no tasks (plain `polyhead serve`)."""
        return cls({name: _describe(name, engine)}, {}, name)

    @classmethod
    def from_specs(cls, specs: list[TaskSpec], make_engine: Callable[[str | None], object],
                   default_backbone: str, engines: dict[str, object] | None = None) -> "TaskRegistry":
        """Build (or take from `engines`) one engine per distinct backbone, then bind every task.

        make_engine(model) builds an engine for a backbone name/path (None: the default model)."""
        engines = dict(engines or {})
        backbones: dict[str, Backbone] = {}
        for spec in specs:
            name = spec.backbone or default_backbone
            if name not in backbones:
                engine = engines.get(name)
                if engine is None:
                    logger.info("loading backbone %s for task %s", name, spec.name)
                    engine = make_engine(None if name == default_backbone else name)
                backbones[name] = _describe(name, engine)
        if default_backbone not in backbones:  # keep the plain model served, e.g. for chat by backbone name
            backbones = {default_backbone: _describe(default_backbone, engines.get(default_backbone)
                                                     or make_engine(None)), **backbones}
        tasks = {spec.name: _bind_named(spec, backbones[spec.backbone or default_backbone]) for spec in specs}
        return cls(backbones, tasks, default_backbone)

    @classmethod
    def one_backbone(cls, name: str, engine, specs: list[TaskSpec]) -> "TaskRegistry":
        """The tasks of one backbone bound to its engine, their heads and adapters registered on it
        (what a Ray replica serves: polyhead/deploy/replica.py)."""
        backbone = _describe(name, engine)
        return cls({name: backbone}, {spec.name: _bind_named(spec, backbone) for spec in specs}, name)

    def stop(self) -> None:
        for backbone in self.backbones.values():
            backbone.engine.stop()


def _describe(name: str, engine) -> Backbone:
    info = engine.info
    return Backbone(name, engine, info.is_generative, info.hidden_size, add_special_tokens=not info.is_generative,
                    has_prefix_cache=info.has_prefix_cache)


def _bind_named(spec: TaskSpec, backbone: Backbone) -> ServedTask:
    try:
        served = _bind(spec, backbone)
    except ValueError as err:
        raise ValueError(f"task {spec.name!r} on backbone {backbone.name!r}: {err}") from None
    backbone.tasks.append(spec.name)
    return served


def _bind(spec: TaskSpec, backbone: Backbone) -> ServedTask:
    engine = backbone.engine  # an EngineClient: heads and adapters reach its engine in either mode
    if spec.kind == "generate" and not backbone.is_generative:
        raise ValueError("a generate task needs a generative backbone, and this one is an encoder")
    if spec.is_zero_shot and not backbone.is_generative:
        raise ValueError("zero-shot classify (no head) scores label answers with the LM head, which an "
                         "encoder has not: give the task a trained head")
    adapter = None
    if spec.adapter is not None:
        engine.register_adapter(spec.name, spec.adapter)
        adapter = spec.name
    served = ServedTask(spec, backbone, adapter)
    if spec.response_format:
        served.structured = ResponseFormat.model_validate(spec.response_format).to_structured()
    # heads load here and travel to the engine; imported only then, so a server without trained
    # heads never loads torch in the HTTP process
    from polyhead.models.heads import load_head

    if spec.kind in ("classify", "tag") and spec.head is not None:
        head = load_head(spec.head, spec.kind, len(spec.labels), backbone.hidden_size, spec.pooling)
        engine.register_head(spec.name, head)
    elif spec.kind == "embed":
        served.dimensions = backbone.hidden_size
        if spec.head is not None:
            pooler = _load_embed_pooler(spec, backbone.hidden_size)
            engine.register_head(spec.name, pooler)
            served.dimensions = pooler.projection.shape[0]
    return served


def _load_embed_pooler(spec: TaskSpec, hidden_size: int) -> "EmbedPooler":
    from safetensors.torch import load_file

    from polyhead.models.heads import EmbedPooler

    weight = load_file(spec.head).get("weight")
    if weight is None or weight.dim() != 2 or weight.shape[1] != hidden_size:
        shape = None if weight is None else tuple(weight.shape)
        raise ValueError(f"embed head {spec.head!r} must hold a projection `weight` [dim, {hidden_size}] "
                         f"(the backbone's hidden size), got {shape}")
    return EmbedPooler(spec.pooling, spec.normalize, weight)

