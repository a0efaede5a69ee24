import math

import pytest
import torch
from torch import nn

from polyhead.train.config import DataFiles, TaskConfig, TrainConfig
from polyhead.train.weighting import (
    DWAWeighting,
    GradNormWeighting,
    StaticWeighting,
    UncertaintyWeighting,
    build_weighting,
)


def test_static_weights_combine_present_tasks_only():
    weighting = StaticWeighting({"a": 2.0, "b": 0.5})
    losses = {"a": torch.tensor(3.0, requires_grad=True), "b": torch.tensor(4.0)}
    assert weighting.combine(losses).item() == pytest.approx(8.0)
    assert weighting.combine({"b": torch.tensor(4.0)}).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown tasks"):
        weighting.combine({"c": torch.tensor(1.0)})


def test_uncertainty_log_variances_learn_the_closed_form_optimum():
    fixed = {"a": 0.5, "b": 4.0}  # optimum of exp(-s) L + s is s = log L
    weighting = UncertaintyWeighting(["a", "b"])
    optimizer = torch.optim.Adam(weighting.trainable_parameters(), lr=0.1)
    total = weighting.combine({t: torch.tensor(v) for t, v in fixed.items()})
    assert total.item() == pytest.approx(4.5)  # s = 0: plain sum
    total.backward()
    assert weighting.log_vars.grad.tolist() == pytest.approx([1 - 0.5, 1 - 4.0])  # d/ds = 1 - exp(-s) L
    for _ in range(300):
        optimizer.zero_grad()
        weighting.combine({t: torch.tensor(v) for t, v in fixed.items()}).backward()
        optimizer.step()
    assert weighting.log_vars.tolist() == pytest.approx([math.log(0.5), math.log(4.0)], abs=0.02)
    assert weighting.weights() == pytest.approx({"a": 2.0, "b": 0.25}, rel=0.03)
    restored = UncertaintyWeighting(["a", "b"])
    restored.load_state_dict(weighting.state_dict())
    assert restored.weights() == weighting.weights()


def test_dwa_weights_follow_the_formula():
    weighting = DWAWeighting(["a", "b", "c"], temperature=2.0)
    assert weighting.weights() == {"a": 1.0, "b": 1.0, "c": 1.0}
    for epoch_losses in ([2.0, 1.0, 3.0], [1.0, 0.9, 3.3]):
        for _ in range(3):  # combine accumulates; end_epoch takes the epoch means
            weighting.combine({t: torch.tensor(v) for t, v in zip("abc", epoch_losses)})
        assert weighting.weights() == {"a": 1.0, "b": 1.0, "c": 1.0}  # first two epochs: w = 1
        weighting.end_epoch()
    ratios = [1.0 / 2.0, 0.9 / 1.0, 3.3 / 3.0]
    exps = [math.exp(r / 2.0) for r in ratios]
    expected = {t: 3 * e / sum(exps) for t, e in zip("abc", exps)}
    assert weighting.weights() == pytest.approx(expected)
    assert sum(weighting.weights().values()) == pytest.approx(3.0)
    assert weighting.weights()["c"] > weighting.weights()["b"] > weighting.weights()["a"]
    losses = {"a": torch.tensor(1.0), "c": torch.tensor(2.0)}
    assert weighting.combine(losses).item() == pytest.approx(expected["a"] + 2 * expected["c"])
    weighting.end_epoch({"a": 0.5, "b": 0.9, "c": 3.3})  # explicit means: ratios now vs epoch 2
    exps = [math.exp(r / 2.0) for r in (0.5, 1.0, 1.0)]
    assert weighting.weights()["a"] == pytest.approx(3 * exps[0] / sum(exps))
    state = weighting.state_dict()
    restored = DWAWeighting(["a", "b", "c"])
    restored.load_state_dict(state)
    assert restored.weights() == pytest.approx(weighting.weights(), rel=0)  # same T=2 in both
    with pytest.raises(ValueError, match=r"tasks \['b'\] had no loss"):
        weighting.combine({"a": torch.tensor(1.0), "c": torch.tensor(1.0)})
        weighting.end_epoch()


class TwoTaskModel(nn.Module):
    """A shared layer and two heads; task b's head is 10x larger, so its gradients dominate."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(8, 8)
        self.head_a = nn.Linear(8, 1)
        self.head_b = nn.Linear(8, 1)
        with torch.no_grad():
            self.head_b.weight.mul_(10)

    def losses(self, x, ya, yb):
        h = torch.tanh(self.shared(x))
        return {"a": ((self.head_a(h) - ya) ** 2).mean(), "b": ((self.head_b(h) - yb) ** 2).mean()}


def grad_norm(loss, params):
    return torch.sqrt(sum((g ** 2).sum() for g in torch.autograd.grad(loss, params, retain_graph=True))).item()


def test_gradnorm_moves_weights_toward_balanced_gradient_norms():
    model = TwoTaskModel()
    weighting = GradNormWeighting(["a", "b"], alpha=0.0, lr=0.05)  # alpha 0: equal weighted norms
    x = torch.randn(64, 8)
    ya, yb = torch.randn(64, 1), torch.randn(64, 1)
    shared = list(model.shared.parameters())

    def imbalance():
        losses = model.losses(x, ya, yb)
        w = weighting.weights()
        ga, gb = w["a"] * grad_norm(losses["a"], shared), w["b"] * grad_norm(losses["b"], shared)
        return max(ga, gb) / min(ga, gb)

    before = imbalance()
    assert before > 3
    for _ in range(60):  # weights only: the model stays fixed, so the balance point is fixed
        weighting.update(model.losses(x, ya, yb), shared)
    w = weighting.weights()
    assert w["a"] > w["b"] and sum(w.values()) == pytest.approx(2.0)
    assert imbalance() < 1.3 < before
    grad_before = weighting.task_weights.grad.clone()
    weighting.combine(model.losses(x, ya, yb)).backward()
    assert torch.equal(weighting.task_weights.grad, grad_before)  # the weights are constants there
    assert model.shared.weight.grad is not None  # the combined loss trains the model
    state = weighting.state_dict()
    restored = GradNormWeighting(["a", "b"], alpha=0.0, lr=0.05)
    restored.load_state_dict(state)
    assert restored.weights() == pytest.approx(w)
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        weighting.update({"a": model.losses(x, ya, yb)["a"]}, shared)


def test_gradnorm_alpha_favours_the_slower_task():
    model = TwoTaskModel()
    weighting = GradNormWeighting(["a", "b"], alpha=1.5, lr=0.05)
    x = torch.randn(64, 8)
    ya, yb = torch.randn(64, 1), torch.randn(64, 1)
    weighting.update(model.losses(x, ya, yb), list(model.shared.parameters()))  # records L(0)
    balanced = weighting.weights()
    base = GradNormWeighting(["a", "b"], alpha=1.5, lr=0.05)
    base.load_state_dict(weighting.state_dict())
    for _ in range(40):
        # task a's loss has fallen to a tenth of its start (fast), b's has not: a's weight must drop
        losses = model.losses(x, ya, yb)
        losses["a"] = losses["a"] * (0.1 * weighting.initial_losses[0] / losses["a"].detach())
        losses["b"] = losses["b"] * (weighting.initial_losses[1] / losses["b"].detach())
        weighting.update(losses, list(model.shared.parameters()))
    for _ in range(40):
        losses = model.losses(x, ya, yb)
        losses["a"] = losses["a"] * (base.initial_losses[0] / losses["a"].detach())
        losses["b"] = losses["b"] * (base.initial_losses[1] / losses["b"].detach())
        base.update(losses, list(model.shared.parameters()))
    assert weighting.weights()["a"] < base.weights()["a"]
    assert balanced != weighting.weights()


def test_build_weighting_from_config():
    tasks = [TaskConfig(name=n, kind="classify", data=DataFiles(train="x"), labels=["p", "q"]) for n in "ab"]
    config = TrainConfig(tasks=tasks)
    config.weighting.weights = {"a": 3.0}
    assert build_weighting(config).weights() == {"a": 3.0, "b": 1.0}
    assert build_weighting(config, ["b"]).weights() == {"b": 1.0}  # e.g. only the tasks that train
    with pytest.raises(ValueError, match=r"\['c'\] name no task"):
        build_weighting(config, ["c"])
    for strategy, cls in [("uncertainty", UncertaintyWeighting), ("dwa", DWAWeighting),
                          ("gradnorm", GradNormWeighting)]:
        config.weighting.strategy = strategy
        assert isinstance(build_weighting(config), cls)
        assert list(build_weighting(config, ["b"]).weights()) == ["b"]
