"""Loss curves per task from a run's metrics history, as a PNG (matplotlib, no display needed)."""

from collections import defaultdict
from pathlib import Path


def plot_losses(history: list[dict], path: str | Path, title: str = "") -> Path:
    """history: the run's records ({"type": "train", "step", "task", "loss"} and {"type": "eval",
    "step", "tasks": {task: {"loss": ...}}}) -> one panel per task: training loss (and its moving
    average) with validation loss on top where the task has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = defaultdict(list), defaultdict(list)
    for record in history:
        if record.get("type") == "train":
            train[record["task"]].append((record["step"], record["loss"]))
        elif record.get("type") == "eval":
            for task, metrics in record["tasks"].items():
                if "loss" in metrics:
                    val[task].append((record["step"], metrics["loss"]))
    tasks = list(dict.fromkeys([*train, *val]))
    if not tasks:
        raise ValueError("no losses to plot: the history holds no train or eval records")
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        if train[task]:
            steps, losses = zip(*train[task])
            ax.plot(steps, losses, alpha=0.3, color="tab:blue", label="train")
            ax.plot(steps, _moving_average(losses, 3), color="tab:blue", label="train (mean of 3 records)")
        if val[task]:
            steps, losses = zip(*val[task])
            ax.plot(steps, losses, "o-", color="tab:orange", label="validation")
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def _moving_average(values, window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out
