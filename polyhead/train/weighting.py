"""Loss weighting across tasks: static, uncertainty (Kendall et al. 2018), DWA (Liu et al. 2019),
GradNorm (Chen et al. 2018). Each turns one step's {task: loss} into the loss to backpropagate.

Common interface (`build_weighting(config, tasks=None)` picks one):
    total = weighting.combine(losses)        # losses: {task: scalar tensor}; tasks absent this step
                                             # (single-task batches) simply add nothing
    weighting.weights() -> {task: float}     # the current effective weights, for logs
    weighting.trainable_parameters()         # add these to the trainer's optimizer (uncertainty only)
    weighting.end_epoch(mean_losses=None)    # DWA: call at each "epoch" (e.g. every eval_every steps)
    weighting.update(losses, shared_params)  # GradNorm: call before total.backward() (it needs the graph)
    state_dict() / load_state_dict()         # for exact resume

- static: total = sum_i w_i L_i with the config's weights.
- uncertainty: learned log-variances s_i = log sigma_i^2 (init 0), total = sum_i exp(-s_i) L_i + s_i.
  That is twice the paper's regression objective L_i / (2 sigma_i^2) + log sigma_i; we use this one
  form for every task kind, classification included (the paper's classification variant
  L_i / sigma_i^2 + log sigma_i would be exp(-s_i) L_i + s_i / 2, whose optimum is s_i = log 2L_i).
  For a fixed loss L_i the optimum is s_i = log L_i, i.e. weight exp(-s_i) = 1 / L_i. weights()
  reports exp(-s_i). The s_i are an nn.Parameter: the trainer adds `trainable_parameters()` to its
  optimizer (without weight decay). Under DDP, combine takes their gradient at the ranks' mean
  losses (one all-reduce of K numbers in the forward), so every rank steps them identically.
- dwa: w_i(t) = K exp(r_i(t-1) / T) / sum_j exp(r_j(t-1) / T), r_i(t-1) = L_i(t-1) / L_i(t-2), where
  L_i(t) is task i's mean training loss over epoch t; w_i = 1 for the first two epochs (as the paper).
  `combine` accumulates each task's losses; `end_epoch()` closes the epoch with those means,
  averaged over DDP ranks (or with the means passed in).
- gradnorm: learnable w_i (init 1) with their own Adam (lr = gradnorm_lr), not the trainer's
  optimizer. `update` computes G_i = w_i ||grad_W L_i|| on the shared parameters W (the last shared
  layer), the relative inverse training rates r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0)), and steps
  w on sum_i |G_i - mean(G) r_i^alpha| (the target held constant), then renormalizes sum w_i = K.
  `combine` uses w as constants. Under DDP the gradient norms and losses are averaged over ranks.
"""

import math

import torch
import torch.distributed as dist
from torch import nn

from polyhead.train.config import TrainConfig


class StaticWeighting:
    def __init__(self, weights: dict[str, float]):
        self.task_weights = dict(weights)  # task -> fixed weight

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.task_weights[t] * loss for t, loss in _checked(losses, self.task_weights))

    def weights(self) -> dict[str, float]:
        return dict(self.task_weights)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []

    def end_epoch(self, mean_losses: dict[str, float] | None = None):
        pass

    def update(self, losses: dict[str, torch.Tensor], shared_parameters):
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict):
        pass


class UncertaintyWeighting(nn.Module):
    def __init__(self, tasks: list[str]):
        super().__init__()
        self.tasks = list(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(tasks)))  # [K] s_i = log sigma_i^2

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """sum exp(-s_i) L_i + s_i. Under DDP the s_i are outside the wrapped model, so their gradient
        1 - exp(-s_i) L_i is taken at the ranks' mean loss: every rank steps them identically."""
        total = 0.0
        checked = _checked(losses, self.tasks)
        means = _rank_mean(torch.stack([loss.detach().float() for _, loss in checked]))  # [n]
        for (t, loss), mean in zip(checked, means):
            s = self.log_vars[self.tasks.index(t)]
            precision = torch.exp(-s)
            # value: exp(-s) L + s; gradient: exp(-s) dL for the model, 1 - exp(-s) mean(L) for s
            total = total + precision.detach() * loss + s + (precision - precision.detach()) * mean
        return total

    def weights(self) -> dict[str, float]:
        return {t: math.exp(-s) for t, s in zip(self.tasks, self.log_vars.detach().tolist())}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]

    def end_epoch(self, mean_losses: dict[str, float] | None = None):
        pass

    def update(self, losses: dict[str, torch.Tensor], shared_parameters):
        pass


class DWAWeighting:
    def __init__(self, tasks: list[str], temperature: float = 2.0):
        self.tasks = list(tasks)
        self.temperature = temperature  # T
        self.history: list[dict[str, float]] = []  # mean loss per task of the last two closed epochs
        self.sums = {t: 0.0 for t in tasks}  # this epoch's running loss sums ...
        self.counts = {t: 0 for t in tasks}  # ... and counts (from combine)

    def weights(self) -> dict[str, float]:
        if len(self.history) < 2:
            return {t: 1.0 for t in self.tasks}
        prev, before = self.history[-1], self.history[-2]
        ratios = {t: prev[t] / before[t] if before[t] > 0 else 1.0 for t in self.tasks}
        top = max(ratios.values())
        exps = {t: math.exp((r - top) / self.temperature) for t, r in ratios.items()}
        total = sum(exps.values())
        return {t: len(self.tasks) * e / total for t, e in exps.items()}

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = self.weights()
        total = 0.0
        for t, loss in _checked(losses, self.tasks):
            self.sums[t] += float(loss.detach())
            self.counts[t] += 1
            total = total + weights[t] * loss
        return total

    def end_epoch(self, mean_losses: dict[str, float] | None = None):
        """Close an epoch with its mean loss per task (default: the means of the losses combined)."""
        if mean_losses is None:
            missing = [t for t in self.tasks if self.counts[t] == 0]
            if missing:
                raise ValueError(f"DWA end_epoch: tasks {missing} had no loss this epoch")
            stats = _rank_mean(torch.tensor([[self.sums[t] for t in self.tasks],
                                             [float(self.counts[t]) for t in self.tasks]], dtype=torch.float64))
            mean_losses = {t: float(stats[0, i] / stats[1, i]) for i, t in enumerate(self.tasks)}  # over ranks
        elif set(mean_losses) != set(self.tasks):
            raise ValueError(f"DWA end_epoch needs a mean loss for every task {self.tasks}, got {sorted(mean_losses)}")
        self.history = (self.history + [{t: float(mean_losses[t]) for t in self.tasks}])[-2:]
        self.sums = {t: 0.0 for t in self.tasks}
        self.counts = {t: 0 for t in self.tasks}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []

    def update(self, losses: dict[str, torch.Tensor], shared_parameters):
        pass

    def state_dict(self) -> dict:
        return {"history": [dict(h) for h in self.history], "sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict):
        self.history = [dict(h) for h in state["history"]]
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


class GradNormWeighting(nn.Module):
    def __init__(self, tasks: list[str], alpha: float = 1.5, lr: float = 0.025):
        super().__init__()
        self.tasks = list(tasks)
        self.alpha = alpha  # asymmetry: how hard slow tasks are pulled up
        self.task_weights = nn.Parameter(torch.ones(len(tasks)))  # [K] w_i, sum = K
        self.register_buffer("initial_losses", torch.zeros(len(tasks)))  # [K] L_i(0); 0 = not yet seen
        self.optimizer = torch.optim.Adam([self.task_weights], lr=lr)

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.task_weights.detach()
        return sum(w[self.tasks.index(t)] * loss for t, loss in _checked(losses, self.tasks))

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.task_weights.detach().tolist()))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []  # stepped by update(), never by the trainer's optimizer

    def end_epoch(self, mean_losses: dict[str, float] | None = None):
        pass

    def update(self, losses: dict[str, torch.Tensor], shared_parameters):
        """One GradNorm step on the weights; `losses` must hold every task and still have its graph."""
        missing = [t for t in self.tasks if t not in losses]
        if missing:
            raise ValueError(f"GradNorm needs every task's loss each step (sampling.mixed); missing {missing}")
        shared = [p for p in shared_parameters if p.requires_grad]
        if not shared:
            raise ValueError("GradNorm needs the trainable parameters of the last shared layer")
        norms = []
        for t in self.tasks:
            grads = torch.autograd.grad(losses[t], shared, retain_graph=True, allow_unused=True)
            squares = [(g.float() ** 2).sum() for g in grads if g is not None]
            norms.append(torch.stack(squares).sum().sqrt() if squares else torch.zeros(()))
        task_losses = torch.stack([losses[t].detach().float() for t in self.tasks])
        stats = _rank_mean(torch.stack([torch.stack(norms), task_losses]))
        grad_norms, loss_values = stats[0].detach(), stats[1]  # [K], [K]
        first = self.initial_losses == 0
        self.initial_losses[first] = loss_values[first]
        ratios = loss_values / self.initial_losses.clamp(min=1e-12)  # L_i(t) / L_i(0)
        inverse_rates = ratios / ratios.mean()  # r_i
        g = self.task_weights * grad_norms  # [K] G_i, differentiable in w
        target = (g.mean() * inverse_rates ** self.alpha).detach()
        self.optimizer.zero_grad()
        (g - target).abs().sum().backward(inputs=[self.task_weights])
        self.optimizer.step()
        with torch.no_grad():
            self.task_weights.clamp_(min=1e-3)
            self.task_weights.mul_(len(self.tasks) / self.task_weights.sum())

    def state_dict(self, *args, **kwargs) -> dict:
        state = super().state_dict(*args, **kwargs)
        state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict, strict: bool = True):
        state = dict(state)
        self.optimizer.load_state_dict(state.pop("optimizer"))
        return super().load_state_dict(state, strict=strict)


def _rank_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean over DDP ranks (every rank must call this at the same point); itself without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def _checked(losses: dict[str, torch.Tensor], tasks) -> list[tuple[str, torch.Tensor]]:
    if not losses:
        raise ValueError("combine needs at least one task's loss")
    unknown = [t for t in losses if t not in tasks]
    if unknown:
        raise ValueError(f"losses for unknown tasks {unknown}; tasks: {list(tasks)}")
    return list(losses.items())


Weighting = StaticWeighting | UncertaintyWeighting | DWAWeighting | GradNormWeighting


def build_weighting(config: TrainConfig, tasks: list[str] | None = None) -> Weighting:
    """The configured weighting over `tasks` (default: all of config.tasks, in config order)."""
    names = [t.name for t in config.tasks]
    tasks = names if tasks is None else list(tasks)
    unknown = [t for t in tasks if t not in names]
    if unknown:
        raise ValueError(f"build_weighting: {unknown} name no task; tasks: {names}")
    strategy = config.weighting.strategy
    if strategy == "static":
        return StaticWeighting({t: w for t, w in config.static_weights().items() if t in tasks})
    if strategy == "uncertainty":
        return UncertaintyWeighting(tasks)
    if strategy == "dwa":
        return DWAWeighting(tasks, config.weighting.dwa_temperature)
    return GradNormWeighting(tasks, config.weighting.gradnorm_alpha, config.weighting.gradnorm_lr)
