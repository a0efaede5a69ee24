"""A run folder's files and the model a TrainConfig describes.

    <run>/config.yaml          the resolved TrainConfig (absolute paths), written at the start
    <run>/checkpoints/         step-<N>.pt and best.pt (checkpoint.py)
    <run>/metrics.jsonl        one record per logged train step and per evaluation
    <run>/results.json         the final per-task table (validation and test)
    <run>/loss_curves.png      loss per task (plots.py)
    <run>/packs/, tasks.yaml   the exported task packs (export.py)
"""

from pathlib import Path

import yaml

from polyhead.train.checkpoint import BEST, CHECKPOINT_DIR, latest_checkpoint, load_checkpoint
from polyhead.train.model import LoraSettings, MultiTaskModel, TaskHeadConfig, resolve_backbone_folder

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
PLOT_FILE = "loss_curves.png"


def task_heads(config) -> list[TaskHeadConfig]:
    return [TaskHeadConfig(t.name, t.kind, list(t.labels), t.pooling) for t in config.tasks]


def lora_settings(config) -> dict[str, LoraSettings]:
    out = {}
    for task in config.tasks:
        lora = config.lora_for(task.name)
        out[task.name] = LoraSettings(lora.r, lora.alpha, lora.dropout, tuple(lora.targets))
    return out


def build_model(config) -> MultiTaskModel:
    return MultiTaskModel(resolve_backbone_folder(config.backbone), task_heads(config), config.train.mode,
                          lora_settings(config))


def save_run_config(config, run_dir: Path) -> Path:
    path = Path(run_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)
    return path


def load_run_config(run_dir: str | Path):
    from polyhead.train.config import TrainConfig

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} is not a training run: no {CONFIG_FILE}")
    return TrainConfig.from_yaml(path)


def run_checkpoint(run_dir: str | Path) -> Path:
    """best.pt if the run evaluated, else its latest step checkpoint."""
    best = Path(run_dir) / CHECKPOINT_DIR / BEST
    path = best if best.is_file() else latest_checkpoint(Path(run_dir))
    if path is None:
        raise ValueError(f"run {str(run_dir)!r} has no checkpoint in {CHECKPOINT_DIR}/")
    return path


def load_run_model(run_dir: str | Path, checkpoint: Path | None = None) -> MultiTaskModel:
    """The run's model with its trained weights (best checkpoint unless one is named)."""
    model = build_model(load_run_config(run_dir))
    state = load_checkpoint(checkpoint or run_checkpoint(run_dir))
    model.load_trainable_state_dict(state["model"])
    return model.eval()
