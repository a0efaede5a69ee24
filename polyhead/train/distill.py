"""Knowledge distillation: a student learns a teacher's softened logits (Hinton et al. 2015).

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * hard loss

classify: over the label logits, one distribution per example. generate: over the vocabulary at
every response token (the positions whose next token carries a label), averaged over those tokens.
The teacher is either a finished training run (its config + best checkpoint: the trained heads and
adapters) or a plain backbone (a model path or known name; generate tasks only, since a plain
backbone has no classify head). The student is the run being trained: a smaller backbone, or the
same backbone with a different trainable subset (heads / lora / full).
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from polyhead.train.model import IGNORE_INDEX, MultiTaskModel, TaskHeadConfig, resolve_backbone_folder


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of T^2 * KL(p_teacher || p_student), both softened by T. logits: [N, C]."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # [N]
    return kl.mean() * temperature ** 2


def distill_loss(kind: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 hard_loss: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """classify: logits [B, C], labels [B]; generate: logits [B, T, V], labels [B, T] aligned with the
    inputs (the logits at t are scored where labels[t + 1] is a response token)."""
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"distill: the student has {student_logits.shape[-1]} outputs, the teacher "
                         f"{teacher_logits.shape[-1]}; they need the same labels / vocabulary")
    if kind == "classify":
        soft = kd_kl(student_logits, teacher_logits, temperature)
    elif kind == "generate":
        scored = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]
        soft = kd_kl(student_logits[:, :-1][scored], teacher_logits[:, :-1][scored], temperature)
    else:
        raise ValueError(f"distill covers classify and generate tasks, not {kind}")
    return alpha * soft + (1 - alpha) * hard_loss


class Teacher:
    """Frozen teacher logits for a task's batch."""

    def __init__(self, source: str, tasks: dict[str, TaskHeadConfig], distilled: list[str]):
        self.model = load_teacher(source, tasks, distilled).eval().requires_grad_(False)

    @torch.no_grad()
    def logits(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.forward_task(task, input_ids, attention_mask).logits


def load_teacher(source: str, tasks: dict[str, TaskHeadConfig], distilled: list[str]) -> MultiTaskModel:
    """A run folder (its config.yaml and best or latest checkpoint) or a backbone for generate tasks."""
    from polyhead.train.run_files import load_run_model

    path = Path(source)
    if (path / "config.yaml").is_file():
        teacher = load_run_model(path)
        for name in distilled:
            mine, theirs = tasks[name], teacher.tasks.get(name)
            if theirs is None or theirs.kind != mine.kind or theirs.labels != mine.labels:
                raise ValueError(f"distill.teacher {source!r}: task {name!r} ({mine.kind}, labels {mine.labels}) "
                                 "is not trained there with the same kind and labels")
        return teacher
    not_generate = [n for n in distilled if tasks[n].kind != "generate"]
    if not_generate:
        raise ValueError(f"distill.teacher {source!r} is a plain backbone, which has no head for {not_generate}; "
                         "use a training run folder as the teacher for classify tasks")
    generate = [TaskHeadConfig(n, "generate", []) for n in distilled]
    return MultiTaskModel(resolve_backbone_folder(source), generate, mode="heads")
