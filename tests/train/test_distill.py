"""Distillation: the loss is the formula, and a student's KL to its teacher drops with training."""

import pytest
import torch

from polyhead.train.distill import distill_loss, kd_kl
from polyhead.train.model import MultiTaskModel, TaskHeadConfig


def test_classify_distill_loss_equals_the_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    hard = torch.tensor(1.25)
    T, alpha = 2.0, 0.7
    p_t, p_s = (teacher / T).softmax(-1), (student / T).softmax(-1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    expected = alpha * T * T * kl + (1 - alpha) * hard
    got = distill_loss("classify", student, teacher, hard, torch.zeros(4, dtype=torch.long), T, alpha)
    torch.testing.assert_close(got, expected)
    assert kd_kl(teacher, teacher, T).item() == pytest.approx(0.0, abs=1e-6)


def test_generate_distill_scores_response_tokens_only():
    torch.manual_seed(0)
    student, teacher = torch.randn(1, 4, 10), torch.randn(1, 4, 10)
    labels = torch.tensor([[-100, -100, 7, 2]])  # logits at t=1,2 predict the response tokens
    got = distill_loss("generate", student, teacher, torch.tensor(0.0), labels, 1.0, 1.0)
    torch.testing.assert_close(got, kd_kl(student[0, 1:3], teacher[0, 1:3], 1.0))
    with pytest.raises(ValueError, match="same labels"):
        distill_loss("classify", torch.randn(2, 3), torch.randn(2, 4), torch.tensor(0.0), None, 1.0, 0.5)


def test_student_kl_to_teacher_drops(tiny_folder):
    task = [TaskHeadConfig("topic", "classify", ["a", "b", "c"])]
    torch.manual_seed(1)
    teacher = MultiTaskModel(tiny_folder, task, mode="heads").eval()
    with torch.no_grad():
        teacher.heads["topic"].linear.weight.mul_(20)  # a confident teacher the fresh student disagrees with
    torch.manual_seed(2)
    student = MultiTaskModel(tiny_folder, task, mode="heads")
    optimizer = torch.optim.AdamW(student.trainable_parameters(), lr=5e-2)
    ids = torch.randint(3, 250, (16, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        target = teacher.forward_task("topic", ids, mask).logits

    def kl():
        with torch.no_grad():
            return kd_kl(student.forward_task("topic", ids, mask).logits, target, 2.0).item()

    before = kl()
    for _ in range(30):
        out = student.forward_task("topic", ids, mask, labels=target.argmax(-1))
        loss = distill_loss("classify", out.logits, target, out.loss, None, 2.0, 0.9)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert kl() < 0.3 * before
