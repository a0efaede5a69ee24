"""Evaluate a MultiTaskModel on each task's split: per-task metrics, predictions, a printed table.

- classify: accuracy, macro-F1 (and the loss); predictions are label indices, with probabilities
- tag: span precision/recall/F1 over BIO spans at the word level (each word's tag is read at its
  first subword, the token that carries its label), token accuracy over those words
- generate: loss and perplexity over the response tokens
- embed: retrieval accuracy (is each text's own positive the nearest of all the split's positives)
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from polyhead.train.metrics import (
    PRIMARY_METRIC,
    accuracy,
    macro_f1,
    perplexity,
    retrieval_accuracy,
    span_prf,
)
from polyhead.train.model import IGNORE_INDEX, MultiTaskModel


@dataclass
class TaskEval:
    task: str  # the task's name
    kind: str  # classify | tag | generate | embed
    num_examples: int
    metrics: dict[str, float]  # name -> value; PRIMARY_METRIC[kind] is always among them
    predictions: list = field(default_factory=list)  # classify: label index; tag: BIO tags per example
    probabilities: torch.Tensor | None = None  # classify: [N, labels] softmax

    @property
    def primary(self) -> float:
        return self.metrics[PRIMARY_METRIC[self.kind]]


@torch.no_grad()
def evaluate_task(model: MultiTaskModel, name: str, examples, pad_token_id: int, batch_size: int = 32,
                  autocast_dtype: torch.dtype | None = None) -> TaskEval:
    """Run one task's examples (a TaskDataset or list of Examples) through the model, in order."""
    from polyhead.train.data import collate

    was_training = model.training
    model.eval()
    spec = model.tasks[name]
    device = next(model.parameters()).device
    losses, preds, golds, probs, anchors, positives = [], [], [], [], [], []
    nll = num_tokens = 0.0
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate([examples[i] for i in range(start, min(start + batch_size, len(examples)))],
                            pad_token_id, task=name).to(device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = model([batch])[0]
            losses.append(out.loss.item() * batch.size)
            if spec.kind == "classify":
                probs.append(out.logits.float().softmax(-1).cpu())
                preds += out.logits.argmax(-1).tolist()
                golds += batch.labels.tolist()
            elif spec.kind == "tag":
                tags = out.logits.argmax(-1)  # [B, T]
                for row in range(batch.size):
                    scored = batch.labels[row] != IGNORE_INDEX  # first subword of each word
                    preds.append([spec.labels[i] for i in tags[row][scored].tolist()])
                    golds.append([spec.labels[i] for i in batch.labels[row][scored].tolist()])
            elif spec.kind == "generate":
                n = (batch.labels[:, 1:] != IGNORE_INDEX).sum().item()
                nll, num_tokens = nll + out.loss.item() * n, num_tokens + n
            else:
                half = out.embeddings.shape[0] // 2
                anchors.append(out.embeddings[:half].float().cpu())
                positives.append(out.embeddings[half:].float().cpu())
    finally:
        model.train(was_training)
    return _finish(spec, len(examples), losses, preds, golds, probs, anchors, positives, nll, num_tokens)


def _finish(spec, count, losses, preds, golds, probs, anchors, positives, nll, num_tokens) -> TaskEval:
    loss = sum(losses) / count  # mean of per-batch losses weighted by batch size (generate: per token)
    if spec.kind == "classify":
        metrics = {"accuracy": accuracy(preds, golds), "macro_f1": macro_f1(preds, golds, len(spec.labels)),
                   "loss": loss}
        return TaskEval(spec.name, spec.kind, count, metrics, preds, torch.cat(probs))
    if spec.kind == "tag":
        metrics = span_prf(preds, golds)
        flat = [(p, g) for ps, gs in zip(preds, golds) for p, g in zip(ps, gs)]
        metrics["token_accuracy"] = sum(p == g for p, g in flat) / max(len(flat), 1)
        metrics["loss"] = loss
        return TaskEval(spec.name, spec.kind, count, metrics, preds)
    if spec.kind == "generate":
        return TaskEval(spec.name, spec.kind, count, perplexity(nll, int(num_tokens)))
    # in-batch contrastive loss depends on the batch; retrieval is over the whole split
    metrics = {"retrieval_acc": retrieval_accuracy(torch.cat(anchors), torch.cat(positives)), "loss": loss}
    return TaskEval(spec.name, spec.kind, count, metrics)


def evaluate(model: MultiTaskModel, datasets: dict, pad_token_id: int, batch_size: int = 32,
             autocast_dtype: torch.dtype | None = None) -> dict[str, TaskEval]:
    """datasets: {task: examples} -> {task: TaskEval}, in the model's task order."""
    return {name: evaluate_task(model, name, datasets[name], pad_token_id, batch_size, autocast_dtype)
            for name in model.tasks if name in datasets}


def selection_score(results: dict[str, TaskEval], best_metric: str) -> float:
    """The number the best checkpoint maximizes. `mean`: the mean of each task's primary metric, a
    generate task counting 1/perplexity (the mean token probability, higher is better, in (0, 1]);
    `<task>.<metric>`: that metric, negated when lower is better."""
    if best_metric == "mean":
        scores = [1 / r.primary if r.kind == "generate" else r.primary for r in results.values()]
        return sum(scores) / len(scores)
    task, _, metric = best_metric.partition(".")
    if task not in results or metric not in results[task].metrics:
        known = {t: sorted(r.metrics) for t, r in results.items()}
        raise ValueError(f"train.best_metric {best_metric!r} names no evaluated metric; known: {known}")
    value = results[task].metrics[metric]
    return -value if metric in ("loss", "perplexity") else value


def results_to_dict(results: dict[str, TaskEval]) -> dict:
    return {name: {"kind": r.kind, "num_examples": r.num_examples, **r.metrics} for name, r in results.items()}


def format_table(results: dict[str, TaskEval], title: str = "") -> str:
    """An aligned plain-text table: a row per task, its primary metric first."""
    rows = [("task", "kind", "n", "primary", "metrics")]
    for name, r in results.items():
        main = PRIMARY_METRIC[r.kind]
        others = ", ".join(f"{k}={_fmt(v)}" for k, v in r.metrics.items() if k != main)
        rows.append((name, r.kind, str(r.num_examples), f"{main}={_fmt(r.metrics[main])}", others))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(([title] if title else []) + lines)


def save_results(results: dict[str, TaskEval], path: Path, extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({**(extra or {}), "tasks": results_to_dict(results)}, indent=2))
    tmp.replace(path)
    return path


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4f}"
