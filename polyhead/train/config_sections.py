"""The run-wide training settings: optimizer, schedule, steps, task sampling, loss weighting, distillation.

The YAML format is documented in polyhead/train/config.py; errors name the field path.
"""

from dataclasses import dataclass, field

from polyhead.cpu import check_dtype_supported, cpu_features
from polyhead.train.config_parse import path_error
from polyhead.train.config_task import LoraConfig

TRAIN_MODES = ("heads", "lora", "full")
SCHEDULES = ("constant", "linear", "cosine")
DTYPES = ("auto", "float32", "bfloat16")
SAMPLING_STRATEGIES = ("proportional", "temperature", "round_robin", "dynamic")
WEIGHTING_STRATEGIES = ("static", "uncertainty", "dwa", "gradnorm")
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
    # backbone compute: float32 | bfloat16 | auto (bfloat16 only where it is native: AVX512-BF16);
    # heads and loss stay float32. bfloat16 elsewhere is refused (~5 s a step instead of <1 on a Zen 3)
    dtype: str = "float32"
    seed: int = 0
    eval_every: int = 100  # optimizer steps between validation runs (0 = only at the end)
    checkpoint_every: int = 100  # optimizer steps between checkpoints (0 = only at the end)
    best_metric: str = "mean"  # `mean` of the tasks' main metrics, or `<task>.<metric>`
    log_every: int = 10  # optimizer steps between training-loss log lines
    length_grouping: int = 0  # batching.py: sort runs of this many batches by length (less padding); 0 = off

    def validate(self, where: str):
        if self.mode not in TRAIN_MODES:
            raise path_error(f"{where}.mode", f"must be one of {', '.join(TRAIN_MODES)}, got {self.mode!r}")
        self.lora.validate(f"{where}.lora")
        self.optimizer.validate(f"{where}.optimizer")
        self.schedule.validate(f"{where}.schedule")
        for name in ("batch_size", "grad_accumulation", "log_every"):
            if getattr(self, name) < 1:
                raise path_error(f"{where}.{name}", f"must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "length_grouping"):
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
        check_dtype_supported(self.dtype, f"{where}.dtype")  # its error names the field

    @property
    def uses_bfloat16(self) -> bool:
        """Whether the backbone computes in bfloat16 (auto: where the CPU has it natively)."""
        return self.dtype == "bfloat16" or (self.dtype == "auto" and cpu_features().native_bf16)


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
