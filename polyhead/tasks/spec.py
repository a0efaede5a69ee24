"""TaskSpec: one task served on a shared backbone, and the task-pack folder format.

A task pack is what `polyhead train` exports and `polyhead serve --tasks` loads:

    <pack>/task.yaml          the TaskSpec fields below (paths relative to the pack)
    <pack>/head.safetensors   classify/tag: `weight` [num_labels, hidden], `bias` [num_labels];
                              embed (optional): a projection `weight` [dim, hidden]
    <pack>/adapter/           optional LoRA in PEFT format (adapter_config.json,
                              adapter_model.safetensors)

A manifest (`tasks.yaml`) lists tasks inline or by pack folder:

    tasks:
      - {name: chat, kind: generate}
      - {name: sentiment, kind: classify, labels: [negative, neutral, positive], ...}
      - pack: runs/demo/sentiment      # a folder with task.yaml
"""

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from polyhead.engine.core.kinds import TASK_KINDS

POOLINGS = ("last", "mean", "cls")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass
class TaskSpec:
    name: str  # what clients send as `task` or `model`; letters, digits, - _ .
    kind: str  # generate | classify | tag | embed
    backbone: str | None = None  # model path or known name; None: the default generative backbone
    adapter: str | None = None  # LoRA folder in PEFT format, applied to this task's rows only
    head: str | None = None  # head.safetensors; classify without a head scores label verbalizers
    labels: list[str] = field(default_factory=list)  # classify: class names; tag: BIO tags (O, B-X, I-X)
    pooling: str = "last"  # classify/embed: which token states become one vector (last | mean | cls)
    normalize: bool = False  # embed: L2-normalize the vector
    prompt_template: str | None = None  # "{input}" is replaced by the request's text
    verbalizers: dict[str, str] = field(default_factory=dict)  # zero-shot classify: label -> its answer text
    sampling: dict = field(default_factory=dict)  # generate: default SamplingParams fields
    # generate: the structure every reply has unless the request asks for its own, in OpenAI's
    # response_format shape, e.g. {type: json_schema, json_schema: {name: x, schema: {...}}}
    response_format: dict = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if not self.name or not set(self.name) <= _NAME_CHARS:
            raise ValueError(f"task name {self.name!r} must be non-empty letters, digits, '-', '_' or '.'")
        where = f"task {self.name!r}"
        if self.kind not in TASK_KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(TASK_KINDS)}, got {self.kind!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"{where}: pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.kind in ("classify", "tag") and not self.labels:
            raise ValueError(f"{where}: a {self.kind} task needs labels")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"{where}: labels must be unique, got {self.labels}")
        if self.kind == "tag" and self.head is None:
            raise ValueError(f"{where}: a tag task needs a trained head (head: path to head.safetensors)")
        if self.kind == "classify" and self.head is None:
            missing = [label for label in self.labels if not self.verbalizers.get(label, label).strip()]
            if missing:
                raise ValueError(f"{where}: zero-shot labels need non-empty verbalizers: {missing}")
        if self.prompt_template is not None and "{input}" not in self.prompt_template:
            raise ValueError(f"{where}: prompt_template must contain {{input}}")
        if self.response_format and self.kind != "generate":
            raise ValueError(f"{where}: response_format applies to generate tasks only, not {self.kind}")
        unknown = set(self.verbalizers) - set(self.labels)
        if unknown:
            raise ValueError(f"{where}: verbalizers name unknown labels {sorted(unknown)}")

    @property
    def is_pooling(self) -> bool:
        """Prefill-only: the request ends when its prompt is computed."""
        return self.kind != "generate" and not (self.kind == "classify" and self.head is None)

    @property
    def is_zero_shot(self) -> bool:
        return self.kind == "classify" and self.head is None

    def verbalizer(self, label: str) -> str:
        return self.verbalizers.get(label, label)

    def render(self, text: str) -> str:
        return text if self.prompt_template is None else self.prompt_template.replace("{input}", text)

    @classmethod
    def from_dict(cls, data: dict, base_dir: Path | None = None) -> "TaskSpec":
        """From a manifest entry or task.yaml; relative adapter/head paths resolve against base_dir."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"task {data.get('name')!r}: unknown fields {sorted(unknown)}; known: {sorted(known)}")
        for required in ("name", "kind"):
            if required not in data:
                raise ValueError(f"a task entry needs {required!r}: {data}")
        data = dict(data)
        if base_dir is not None:
            for key in ("adapter", "head"):
                if data.get(key) is not None and not Path(data[key]).is_absolute():
                    data[key] = str(Path(base_dir) / data[key])
        return cls(**data)

    def to_dict(self, relative_to: Path | None = None) -> dict:
        data = {k: v for k, v in asdict(self).items() if v not in (None, [], {}, "")}
        if relative_to is not None:
            for key in ("adapter", "head"):
                if key in data:
                    data[key] = str(Path(data[key]).resolve().relative_to(Path(relative_to).resolve()))
        return data
