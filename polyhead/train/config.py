"""Training configuration: `TrainConfig.from_yaml(path)`, dataclasses that validate themselves.

Every error is a ValueError naming the field path (`tasks[1].labels`, `train.lora.r`); keys that
no dataclass knows are errors too, so a typo never silently falls back to a default.

    backbone: null                 # model path or registry name; null = the default generative backbone
    output_dir: runs/demo
    tasks:
      - name: sentiment
        kind: classify             # classify | tag | generate | embed
        data: {train: data/sentiment/train.jsonl, validation: ..., test: ...}   # JSONL, CSV or a
                                   # `datasets` save_to_disk folder (a DatasetDict folder: split by name)
        text_column: text
        label_column: label
        labels: [negative, neutral, positive]
        max_length: 64
        pooling: last              # last | mean | cls
        weight: 1.0                # static loss weight (or set it in weighting.weights, not both)
      - {name: ner, kind: tag, tokens_column: tokens, tags_column: tags, labels: [PER, ORG, LOC], ...}
      - {name: chat, kind: generate, prompt_column: prompt, response_column: response, ...}
      - {name: pairs, kind: embed, text_column: text, positive_column: positive, pooling: mean, ...}
    train:
      mode: heads                  # heads (backbone frozen) | lora | full
      lora: {r: 8, alpha: 16, dropout: 0.05, targets: [q_proj, v_proj]}   # tasks[i].lora overrides
      optimizer: {name: adamw, lr: 1.0e-3, weight_decay: 0.0}
      schedule: {name: cosine, warmup_steps: 20}                           # constant | linear | cosine
      batch_size: 16
      grad_accumulation: 1
      steps: 300                   # or epochs: N (passes over the largest task's train split; default 1)
      dtype: float32               # float32 | bfloat16
      seed: 0
      eval_every: 100
      checkpoint_every: 100
      best_metric: mean            # `mean` (of the tasks' main metrics) or `<task>.<metric>`
    sampling: {strategy: temperature, temperature: 2.0, dynamic_temperature: 0.1, mixed: false}
    weighting: {strategy: static, weights: {}, dwa_temperature: 2.0, gradnorm_alpha: 1.5, gradnorm_lr: 0.025}
    distill: {teacher: path, temperature: 2.0, alpha: 0.5, tasks: [sentiment]}   # optional

Tag labels: `labels` may list entity types ([PER, ORG]) or the full BIO tag set ([O, B-PER, I-PER, ...]);
after validation `TaskConfig.labels` is always the full BIO list (O first, then B-X, I-X per type),
which is what the tag head predicts and what a task pack's `labels` holds.
"""

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from polyhead.train.config_parse import from_dict, path_error

TASK_KINDS = ("classify", "tag", "generate", "embed")
POOLINGS = ("last", "mean", "cls")
TRAIN_MODES = ("heads", "lora", "full")
SCHEDULES = ("constant", "linear", "cosine")
DTYPES = ("float32", "bfloat16")
SAMPLING_STRATEGIES = ("proportional", "temperature", "round_robin", "dynamic")
WEIGHTING_STRATEGIES = ("static", "uncertainty", "dwa", "gradnorm")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass
class DataFiles:
    train: str  # required: JSONL / CSV file or a datasets save_to_disk folder
    validation: str | None = None  # evaluated every train.eval_every steps; best checkpoint by it
    test: str | None = None  # evaluated once at the end

    def splits(self) -> dict[str, str]:
        return {k: v for k, v in (("train", self.train), ("validation", self.validation),
                                  ("test", self.test)) if v is not None}


@dataclass
class LoraConfig:
    r: int = 8  # rank
    alpha: float = 16.0  # scaling is alpha / r
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # module names (PEFT)

    def validate(self, where: str):
        if self.r < 1:
            raise path_error(f"{where}.r", f"must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise path_error(f"{where}.alpha", f"must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise path_error(f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise path_error(f"{where}.targets", "must name at least one module")


@dataclass
class TaskConfig:
    name: str  # task name: letters, digits, - _ . (also the exported task pack's name)
    kind: str  # classify | tag | generate | embed
    data: DataFiles  # files per split
    text_column: str = "text"  # classify / embed (anchor)
    label_column: str = "label"  # classify: a label name (or an index into labels)
    tokens_column: str = "tokens"  # tag: list of words
    tags_column: str = "tags"  # tag: list of BIO tags, one per word
    prompt_column: str = "prompt"  # generate
    response_column: str = "response"  # generate: the loss is on these tokens only
    positive_column: str = "positive"  # embed: the text paired with text_column
    labels: list[str] = field(default_factory=list)  # classify: class names; tag: see module docstring
    max_length: int = 128  # tokens per example (embed: per side); longer inputs are truncated
    pooling: str = "last"  # classify / embed: last | mean | cls
    weight: float | None = None  # static loss weight; None = weighting.weights[name] or 1.0
    chat_template: bool | None = None  # generate: wrap the prompt in the tokenizer's chat template
    #                                     (None = when the tokenizer has one)
    prompt_template: str | None = None  # classify / embed: "{input}" replaced by the text (kept in the pack)
    lora: LoraConfig | None = None  # per-task LoRA settings (train.mode lora); None = train.lora

    def validate(self, where: str):
        if not self.name or not set(self.name) <= _NAME_CHARS:
            raise path_error(f"{where}.name", f"must be letters, digits, '-', '_' or '.', got {self.name!r}")
        if self.kind not in TASK_KINDS:
            raise path_error(f"{where}.kind", f"must be one of {', '.join(TASK_KINDS)}, got {self.kind!r}")
        if self.pooling not in POOLINGS:
            raise path_error(f"{where}.pooling", f"must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.max_length < 4:
            raise path_error(f"{where}.max_length", f"must be >= 4, got {self.max_length}")
        if self.weight is not None and self.weight < 0:
            raise path_error(f"{where}.weight", f"must be >= 0, got {self.weight}")
        if self.prompt_template is not None and "{input}" not in self.prompt_template:
            raise path_error(f"{where}.prompt_template", "must contain {input}")
        if self.prompt_template is not None and self.kind not in ("classify", "embed"):
            raise path_error(f"{where}.prompt_template", f"applies to classify and embed tasks, not {self.kind}")
        if not self.data.train:
            raise path_error(f"{where}.data.train", "is required")
        if self.lora is not None:
            self.lora.validate(f"{where}.lora")
        if self.kind in ("classify", "tag"):
            if not self.labels:
                raise path_error(f"{where}.labels", f"a {self.kind} task needs labels")
            if len(set(self.labels)) != len(self.labels):
                raise path_error(f"{where}.labels", f"must be unique, got {self.labels}")
            if any(not isinstance(label, str) or not label.strip() for label in self.labels):
                raise path_error(f"{where}.labels", f"must be non-empty strings, got {self.labels}")
            if self.kind == "tag":
                self.labels = bio_labels(self.labels, f"{where}.labels")
        elif self.labels:
            raise path_error(f"{where}.labels", f"a {self.kind} task takes no labels")

    @property
    def entity_types(self) -> list[str]:
        """tag: the entity types in label order (PER, ORG, ...)."""
        return [label[2:] for label in self.labels if label.startswith("B-")]


def bio_labels(labels: list[str], where: str) -> list[str]:
    """Entity types or a BIO tag list -> the full BIO list: O, B-X, I-X for each type X in order."""
    is_bio = [label == "O" or label[:2] in ("B-", "I-") for label in labels]
    if all(is_bio):
        types = list(dict.fromkeys(label[2:] for label in labels if label != "O"))
        expected = {"O"} | {f"{p}-{t}" for t in types for p in "BI"}
        if set(labels) != expected:
            missing = sorted(expected - set(labels))
            raise path_error(where, f"a BIO tag set needs O and both B- and I- of every type; missing {missing}")
    elif any(is_bio):
        mixed = [label for label, bio in zip(labels, is_bio) if bio]
        raise path_error(where, f"list entity types (PER, ORG) or full BIO tags, not both; got {mixed} among types")
    else:
        types = labels
    return ["O"] + [f"{p}-{t}" for t in types for p in "BI"]


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # only adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0  # gradient clipping; None = off

    def validate(self, where: str):
        if self.name != "adamw":
            raise path_error(f"{where}.name", f"must be adamw, got {self.name!r}")
        if self.lr <= 0:
            raise path_error(f"{where}.lr", f"must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise path_error(f"{where}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise path_error(f"{where}.betas", f"must be two numbers in [0, 1), got {self.betas}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise path_error(f"{where}.max_grad_norm", f"must be > 0 or null, got {self.max_grad_norm}")


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # constant | linear | cosine (decay to 0 at the last step, after warmup)
    warmup_steps: int = 0  # linear warmup from 0 over this many optimizer steps

    def validate(self, where: str):
        if self.name not in SCHEDULES:
            raise path_error(f"{where}.name", f"must be one of {', '.join(SCHEDULES)}, got {self.name!r}")
        if self.warmup_steps < 0:
            raise path_error(f"{where}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")


@dataclass
class TrainSettings:
    mode: str = "heads"  # heads: backbone frozen | lora: adapters + heads | full: everything
    lora: LoraConfig = field(default_factory=LoraConfig)  # mode lora; a task's own `lora` overrides it
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch_size: int = 16  # examples per step per rank (mixed: across all tasks of the step)
    grad_accumulation: int = 1  # steps summed before an optimizer step
    steps: int | None = None  # optimizer steps; at most one of steps / epochs (neither: epochs 1)
    epochs: float | None = None  # passes over the largest task's train split (converted to steps)
    dtype: str = "float32"  # float32 | bfloat16 (backbone compute; heads and loss stay float32)
    seed: int = 0
    eval_every: int = 100  # optimizer steps between validation runs (0 = only at the end)
    checkpoint_every: int = 100  # optimizer steps between checkpoints (0 = only at the end)
    best_metric: str = "mean"  # `mean` of the tasks' main metrics, or `<task>.<metric>`
    log_every: int = 10  # optimizer steps between training-loss log lines

    def validate(self, where: str):
        if self.mode not in TRAIN_MODES:
            raise path_error(f"{where}.mode", f"must be one of {', '.join(TRAIN_MODES)}, got {self.mode!r}")
        self.lora.validate(f"{where}.lora")
        self.optimizer.validate(f"{where}.optimizer")
        self.schedule.validate(f"{where}.schedule")
        for name in ("batch_size", "grad_accumulation", "log_every"):
            if getattr(self, name) < 1:
                raise path_error(f"{where}.{name}", f"must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise path_error(f"{where}.{name}", f"must be >= 0, got {getattr(self, name)}")
        if self.steps is not None and self.epochs is not None:
            raise path_error(f"{where}.steps", "set one of steps or epochs, not both")
        if self.steps is None and self.epochs is None:
            self.epochs = 1.0
        if self.steps is not None and self.steps < 1:
            raise path_error(f"{where}.steps", f"must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise path_error(f"{where}.epochs", f"must be > 0, got {self.epochs}")
        if self.dtype not in DTYPES:
            raise path_error(f"{where}.dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


@dataclass
class SamplingConfig:
    strategy: str = "temperature"  # proportional | temperature | round_robin | dynamic (sampling.py)
    temperature: float = 2.0  # p_i ∝ n_i^(1/T): 1 = proportional, large = uniform (also dynamic's prior)
    dynamic_temperature: float = 0.1  # dynamic: softmax temperature over validation-loss ratios
    mixed: bool = False  # true: every step holds one sub-batch per task, sized by the probabilities

    def validate(self, where: str):
        if self.strategy not in SAMPLING_STRATEGIES:
            raise path_error(f"{where}.strategy",
                             f"must be one of {', '.join(SAMPLING_STRATEGIES)}, got {self.strategy!r}")
        if self.temperature <= 0:
            raise path_error(f"{where}.temperature", f"must be > 0, got {self.temperature}")
        if self.dynamic_temperature <= 0:
            raise path_error(f"{where}.dynamic_temperature", f"must be > 0, got {self.dynamic_temperature}")


@dataclass
class WeightingConfig:
    strategy: str = "static"  # static | uncertainty | dwa | gradnorm (weighting.py)
    weights: dict[str, float] = field(default_factory=dict)  # static: task -> weight (else tasks[i].weight)
    dwa_temperature: float = 2.0  # DWA's T
    gradnorm_alpha: float = 1.5  # GradNorm's asymmetry
    gradnorm_lr: float = 0.025  # learning rate of GradNorm's task weights (their own optimizer)

    def validate(self, where: str):
        if self.strategy not in WEIGHTING_STRATEGIES:
            raise path_error(f"{where}.strategy",
                             f"must be one of {', '.join(WEIGHTING_STRATEGIES)}, got {self.strategy!r}")
        for name, value in self.weights.items():
            if not isinstance(value, (int, float)) or value < 0:
                raise path_error(f"{where}.weights.{name}", f"must be a number >= 0, got {value!r}")
        if self.dwa_temperature <= 0:
            raise path_error(f"{where}.dwa_temperature", f"must be > 0, got {self.dwa_temperature}")
        if self.gradnorm_alpha < 0:
            raise path_error(f"{where}.gradnorm_alpha", f"must be >= 0, got {self.gradnorm_alpha}")
        if self.gradnorm_lr <= 0:
            raise path_error(f"{where}.gradnorm_lr", f"must be > 0, got {self.gradnorm_lr}")


@dataclass
class DistillConfig:
    teacher: str  # a model path / registry name, or a training output folder
    temperature: float = 2.0  # softmax temperature of teacher and student logits
    alpha: float = 0.5  # loss = alpha * KD + (1 - alpha) * task loss
    tasks: list[str] = field(default_factory=list)  # tasks distilled; empty = all

    def validate(self, where: str):
        if not self.teacher:
            raise path_error(f"{where}.teacher", "is required")
        if self.temperature <= 0:
            raise path_error(f"{where}.temperature", f"must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise path_error(f"{where}.alpha", f"must be in [0, 1], got {self.alpha}")


@dataclass
class TrainConfig:
    tasks: list[TaskConfig]  # at least one
    backbone: str | None = None  # model path or registry name; None = the default generative backbone
    output_dir: str = "runs/polyhead"  # checkpoints, packs, logs, data cache; relative to the working dir
    train: TrainSettings = field(default_factory=TrainSettings)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    distill: DistillConfig | None = None

    def __post_init__(self):
        self.validate()

    def validate(self):
        if not self.tasks:
            raise path_error("tasks", "needs at least one task")
        for i, task in enumerate(self.tasks):
            task.validate(f"tasks[{i}]")
        names = [t.name for t in self.tasks]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise path_error(f"tasks[{i}].name", f"{name!r} is used by tasks[{names.index(name)}]")
        self.train.validate("train")
        self.sampling.validate("sampling")
        self.weighting.validate("weighting")
        for name in self.weighting.weights:
            if name not in names:
                raise path_error(f"weighting.weights.{name}", f"names no task; tasks: {names}")
            i = names.index(name)
            if self.tasks[i].weight is not None:
                raise path_error(f"tasks[{i}].weight", f"also set in weighting.weights.{name}; set it once")
        if self.weighting.strategy == "gradnorm" and not self.sampling.mixed and len(self.tasks) > 1:
            raise path_error("weighting.strategy", "gradnorm needs every task's loss each step: set sampling.mixed")
        if self.distill is not None:
            self.distill.validate("distill")
            for j, name in enumerate(self.distill.tasks):
                if name not in names:
                    raise path_error(f"distill.tasks[{j}]", f"{name!r} names no task; tasks: {names}")
        best = self.train.best_metric
        if best != "mean" and ("." not in best or best.split(".", 1)[0] not in names):
            raise path_error("train.best_metric", f"must be `mean` or `<task>.<metric>` with a task of {names}, "
                                                  f"got {best!r}")

    def task(self, name: str) -> TaskConfig:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    def static_weights(self) -> dict[str, float]:
        """Each task's static loss weight: tasks[i].weight, else weighting.weights[name], else 1."""
        return {t.name: float(t.weight if t.weight is not None else self.weighting.weights.get(t.name, 1.0))
                for t in self.tasks}

    def lora_for(self, name: str) -> LoraConfig:
        return self.task(name).lora or self.train.lora

    @classmethod
    def from_dict(cls, data: Any, base_dir: str | Path | None = None) -> "TrainConfig":
        """Build and validate. Relative data paths, and a relative backbone/teacher path that exists there,
        resolve against base_dir (the YAML file's folder); output_dir stays relative to the working
        directory (where `polyhead train` runs)."""
        config = from_dict(cls, data, "")
        if base_dir is not None:
            _resolve_paths(config, Path(base_dir))
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{str(path)!r}: cannot read the training config: {err}") from None
        try:
            return cls.from_dict(data, base_dir=path.parent)
        except ValueError as err:
            raise ValueError(f"{str(path)!r}: {err}") from None

    def to_dict(self) -> dict:
        return _to_plain(self)


def _resolve_paths(config: TrainConfig, base: Path):
    def resolve(p: str) -> str:
        return p if Path(p).is_absolute() else str(base / p)

    for task in config.tasks:
        for split in ("train", "validation", "test"):
            value = getattr(task.data, split)
            if value is not None:
                setattr(task.data, split, resolve(value))
    if config.backbone is not None and (base / config.backbone).exists():
        config.backbone = resolve(config.backbone)
    if config.distill is not None and (base / config.distill.teacher).exists():
        config.distill.teacher = resolve(config.distill.teacher)


def _to_plain(value):
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value
