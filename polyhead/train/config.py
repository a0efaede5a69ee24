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
      dtype: float32               # float32 | bfloat16 | auto (bfloat16 where native)
      seed: 0
      eval_every: 100
      checkpoint_every: 100
      best_metric: mean            # `mean` (of the tasks' main metrics) or `<task>.<metric>`
      length_grouping: 0           # sort runs of N batches by length (less padding); 0 = random batches
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
from polyhead.train.config_sections import (
    DTYPES,
    SAMPLING_STRATEGIES,
    SCHEDULES,
    TRAIN_MODES,
    WEIGHTING_STRATEGIES,
    DistillConfig,
    OptimizerConfig,
    SamplingConfig,
    ScheduleConfig,
    TrainSettings,
    WeightingConfig,
)
from polyhead.train.config_task import POOLINGS, TASK_KINDS, DataFiles, LoraConfig, TaskConfig, bio_labels

__all__ = ["DTYPES", "POOLINGS", "SAMPLING_STRATEGIES", "SCHEDULES", "TASK_KINDS", "TRAIN_MODES",
           "WEIGHTING_STRATEGIES", "DataFiles", "DistillConfig", "LoraConfig", "OptimizerConfig", "SamplingConfig",
           "ScheduleConfig", "TaskConfig", "TrainConfig", "TrainSettings", "WeightingConfig", "bio_labels"]

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
