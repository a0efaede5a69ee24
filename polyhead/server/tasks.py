"""Task routing shared by every endpoint (which backbone and task a request names, its inputs,
its tenant) and GET /v1/tasks."""

import hashlib
import time
from dataclasses import dataclass

from fastapi import APIRouter, Request

from polyhead.engine.core.kinds import KINDS
from polyhead.models.generation_config import GENERATION_FIELDS
from polyhead.server.errors import APIError
from polyhead.server.protocol import SamplingFields
from polyhead.server.registry import Backbone, ServedTask

router = APIRouter()

# Which task kinds each endpoint serves, from the one registry of kinds (engine/core/kinds.py).
_ENDPOINT_FOR_KIND = {kind.name: kind.endpoint for kind in KINDS.values() if kind.is_task_kind}
ENDPOINT_KINDS = {endpoint: tuple(k for k, e in _ENDPOINT_FOR_KIND.items() if e == endpoint)
                  for endpoint in _ENDPOINT_FOR_KIND.values()}
ENDPOINT_KINDS["/v1/completions"] = ENDPOINT_KINDS["/v1/chat/completions"]


@dataclass(slots=True)
class ServedModel:
    """What a `model` field resolved to: a backbone, and the generate task or adapter it named."""

    backbone: Backbone
    task: ServedTask | None  # None: the backbone itself, no template
    lora: str | None = None  # a --lora-modules adapter named as `model` (vLLM's way), else None

    @property
    def engine(self):
        return self.backbone.engine

    @property
    def adapter(self) -> str | None:
        return self.task.adapter if self.task is not None else self.lora

    @property
    def task_name(self) -> str:
        """The task label of its rows (fair share, metrics): the task's, or the adapter's name."""
        return self.task.name if self.task is not None else (self.lora or "")


@router.get("/v1/tasks")
async def list_tasks(request: Request):
    registry = request.app.state.server.registry
    return {"object": "list", "data": [task.card() for task in registry.tasks.values()]}


class TaskRouting:
    """Mixed into ServerState: needs self.registry and self.settings."""

    def model_ids(self) -> list[str]:
        """Names `model` may take: the default model's, its --lora-modules adapters, the other
        backbones', every generate/embed task."""
        names = list(self.settings.model_names) + list(self.settings.lora_names)
        names += [b for b in self.registry.backbones if b != self.registry.default_backbone]
        names += [t.name for t in self.registry.tasks.values() if t.kind in ("generate", "embed")]
        return list(dict.fromkeys(names))

    def backbone_named(self, name: str) -> Backbone | None:
        registry = self.registry
        if name in self.settings.model_names:
            return registry.backbones[registry.default_backbone]
        return registry.backbones.get(name)

    def resolve_generate(self, name: str) -> ServedModel:
        """`model` of a chat/completions request: a generative backbone or a generate task."""
        backbone = self.backbone_named(name)
        if backbone is not None:
            if not backbone.is_generative:
                raise APIError(400, f"model {name!r} is an encoder backbone and cannot generate text; "
                               "use /v1/embeddings", "model", "wrong_task_kind")
            return ServedModel(backbone, None)
        if name in self.settings.lora_names:  # the default backbone with that adapter on its rows
            return ServedModel(self.registry.backbones[self.registry.default_backbone], None, name)
        task = self.registry.tasks.get(name)
        if task is None:
            raise APIError(404, f"model {name!r} does not exist; available: {', '.join(self.model_ids())}",
                           "model", "model_not_found")
        self._check_kind(task, "/v1/chat/completions", "model")
        return ServedModel(task.backbone, task)

    def request_defaults(self, served: ServedModel) -> dict:
        """What fills the fields a chat/completions request leaves unset: a generate task's `sampling`,
        over its backbone's generation_config.json (self.generation_defaults), over OpenAI's defaults."""
        defaults = dict(self.generation_defaults.get(served.backbone.name, {}))
        if served.task is not None:
            defaults.update(served.task.spec.sampling or {})
        return defaults

    def sampling_defaults_for(self, name: str) -> dict | None:
        """For /v1/models: the sampling a request to `name` gets where it sets none, so a UI can show
        it; None for a model that does not generate."""
        try:
            defaults = self.request_defaults(self.resolve_generate(name))
        except APIError:
            return None
        return {field: defaults.get(field, SamplingFields.model_fields[field].default) for field in GENERATION_FIELDS}

    def task(self, name: str, endpoint: str, param: str = "task") -> ServedTask:
        """A task by name, checked against what the endpoint serves: 404 unknown, 400 wrong kind."""
        task = self.registry.tasks.get(name)
        if task is None:
            valid = sorted(t.name for t in self.registry.tasks.values() if t.kind in ENDPOINT_KINDS[endpoint])
            raise APIError(404, f"task {name!r} does not exist; valid tasks for {endpoint}: "
                           f"{', '.join(valid) or 'none (start the server with --tasks)'}", param, "task_not_found")
        self._check_kind(task, endpoint, param)
        return task

    def _check_kind(self, task: ServedTask, endpoint: str, param: str) -> None:
        if task.kind not in ENDPOINT_KINDS[endpoint]:
            raise APIError(400, f"task {task.name!r} is a {task.kind} task, which {endpoint} does not serve; "
                           f"send it to {_ENDPOINT_FOR_KIND[task.kind]}", param, "wrong_task_kind")

    def inputs(self, given: str | list, param: str = "input") -> list:
        """One input or a list of them: 400 when empty, 413 beyond max_inputs_per_request."""
        inputs = [given] if isinstance(given, str) or (given and isinstance(given[0], int)) else list(given)
        if not inputs:
            raise APIError(400, f"{param} is an empty list: send at least one input", param, "empty_input")
        limit = self.settings.max_inputs_per_request
        if len(inputs) > limit:
            raise APIError(413, f"{param} has {len(inputs)} items; the limit is {limit} per request "
                           "(max_inputs_per_request)", param, "too_many_inputs")
        for i, item in enumerate(inputs):
            if isinstance(item, str) and not item.strip():
                raise APIError(400, f"{param}[{i}] is empty", param, "empty_input")
        return inputs

    def routing(self, request: Request, body) -> dict:
        """Keyword arguments for the engine: priority, tenant and deadline (the task and adapter come
        with each job)."""
        return {"priority": body.priority, "tenant": self.tenant(request, body),
                "deadline": time.monotonic() + self.timeout_for(body.timeout)}

    def tenant(self, request: Request, body) -> str:
        """Who is asking, for fair share: the `user` field, else the API key (hashed), else nobody."""
        if getattr(body, "user", None):
            return f"user:{body.user}"
        key = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return f"key:{hashlib.sha256(key.encode()).hexdigest()[:12]}" if key else ""
