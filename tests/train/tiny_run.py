"""A tiny multi-task run on disk: JSONL data for a classify, a tag, a generate and an embed task,
and a training config pointing at a tiny random backbone. Learnable on purpose (the label is in the
text), so a few steps move the metrics."""

import json
import random
from pathlib import Path

import yaml

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
NAMES = ["ann", "bob", "eve", "max"]


def _write(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rows(kind: str, n: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(n):
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        if kind == "sentiment":
            label = rng.choice(["neg", "pos"])
            rows.append({"text": f"{filler} {'good' if label == 'pos' else 'bad'}", "label": label})
        elif kind == "topic":
            label = rng.choice(["x", "y", "z"])
            rows.append({"text": f"{label}{label} {filler}", "label": label})
        elif kind == "ner":
            name = rng.choice(NAMES)
            tokens = [rng.choice(WORDS), name, rng.choice(WORDS)]
            rows.append({"tokens": tokens, "tags": ["O", "B-PER", "O"]})
        elif kind == "reply":
            rows.append({"prompt": filler, "response": filler.upper()})
        else:
            word = rng.choice(WORDS)
            rows.append({"text": f"{word} {filler}", "positive": f"{word}!"})
    return rows


TASKS = {
    "sentiment": {"kind": "classify", "labels": ["neg", "pos"]},
    "topic": {"kind": "classify", "labels": ["x", "y", "z"], "pooling": "mean"},
    "ner": {"kind": "tag", "labels": ["PER"]},
    "reply": {"kind": "generate", "chat_template": False},
    "pairs": {"kind": "embed", "pooling": "mean"},
}


def write_run_config(folder: Path, backbone: Path, tasks: list[str], mode: str = "heads", steps: int = 6,
                     seed: int = 0, sampling: dict | None = None, **train) -> Path:
    """Data for `tasks` under folder/data and folder/config.yaml; returns the config's path."""
    rng = random.Random(seed)
    entries = []
    for name in tasks:
        data = {split: _write(folder / "data" / f"{name}-{split}.jsonl", _rows(name, n, rng))
                for split, n in (("train", 24), ("validation", 8), ("test", 8))}
        entries.append({"name": name, "data": data, "max_length": 32, **TASKS[name]})
    settings = {"mode": mode, "steps": steps, "batch_size": 4, "seed": seed, "eval_every": 3,
                "checkpoint_every": 3, "log_every": 1, "optimizer": {"lr": 5e-3},
                "schedule": {"name": "cosine", "warmup_steps": 1},
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}, **train}
    config = {"backbone": str(backbone), "output_dir": str(folder / "run"), "tasks": entries, "train": settings,
              "sampling": sampling or {"strategy": "temperature", "temperature": 2.0}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
