"""Task samplers: which task the next training batch comes from.

With tasks i = 1..K of n_i training examples:

- proportional:  p_i = n_i / sum_j n_j
- temperature:   p_i ∝ n_i^(1/T)  (T = 1 is proportional; T -> infinity is uniform)
- round_robin:   tasks in config order, one after another (deterministic; uniform on average)
- dynamic:       p_i ∝ q_i * exp(r_i / tau), where q_i is the temperature distribution above, and
                 r_i = L_i(latest) / L_i(previous) is the ratio of task i's two most recent validation
                 losses passed to `update` (r_i = 1 until a task has two). A task whose loss stalls or
                 rises (r_i >= 1) gets more batches than one whose loss is still falling (r_i < 1);
                 tau = `dynamic_temperature` sets how strongly (ratios differ by ~0.01-0.3, so tau ~0.1).

Draws come from the sampler's own seeded generator, so every DDP rank built with the same seed
draws the same task each step (each rank must then `update` with the same, all-reduced, losses).
`state_dict()` / `load_state_dict()` restore the generator, the round-robin position and the loss
history, so a resumed run draws exactly the sequence the uninterrupted one would have.

Mixed batches (`sampling.mixed`): `split_batch(batch_size)` gives every task a share of one step's
batch proportional to p_i: floor(B * p_i), at least one, the rest by largest remainder.
"""

import math
import random

from polyhead.train.config import SAMPLING_STRATEGIES, SamplingConfig


class TaskSampler:
    def __init__(self, sizes: dict[str, int], strategy: str = "temperature", temperature: float = 2.0,
                 dynamic_temperature: float = 0.1, seed: int = 0):
        if not sizes:
            raise ValueError("a task sampler needs at least one task")
        for name, n in sizes.items():
            if n < 1:
                raise ValueError(f"task {name!r} has {n} training examples; it needs at least 1")
        if strategy not in SAMPLING_STRATEGIES:
            raise ValueError(f"sampling strategy must be one of {', '.join(SAMPLING_STRATEGIES)}, got {strategy!r}")
        if temperature <= 0 or dynamic_temperature <= 0:
            raise ValueError("sampling temperatures must be > 0")
        self.tasks = list(sizes)  # config order
        self.sizes = dict(sizes)  # task -> number of training examples
        self.strategy = strategy
        self.temperature = temperature
        self.dynamic_temperature = dynamic_temperature
        self.rng = random.Random(seed)
        self.position = 0  # round_robin: index of the next task
        self.losses: dict[str, list[float]] = {t: [] for t in self.tasks}  # dynamic: last two val losses

    @classmethod
    def from_config(cls, config: SamplingConfig, sizes: dict[str, int], seed: int) -> "TaskSampler":
        return cls(sizes, config.strategy, config.temperature, config.dynamic_temperature, seed)

    def probabilities(self) -> dict[str, float]:
        if self.strategy == "round_robin":
            return {t: 1 / len(self.tasks) for t in self.tasks}
        exponent = 1.0 if self.strategy == "proportional" else 1 / self.temperature
        # in log space: n^(1/T) overflows nothing, and large T stays exact
        logits = {t: exponent * math.log(self.sizes[t]) for t in self.tasks}
        if self.strategy == "dynamic":
            for t, ratio in self.loss_ratios().items():
                logits[t] += ratio / self.dynamic_temperature
        top = max(logits.values())
        weights = {t: math.exp(v - top) for t, v in logits.items()}
        total = sum(weights.values())
        return {t: w / total for t, w in weights.items()}

    def loss_ratios(self) -> dict[str, float]:
        """dynamic: r_i = latest / previous validation loss (1.0 until a task has two)."""
        out = {}
        for t, history in self.losses.items():
            out[t] = history[-1] / history[-2] if len(history) >= 2 and history[-2] > 0 else 1.0
        return out

    def next_task(self) -> str:
        if self.strategy == "round_robin":
            task = self.tasks[self.position]
            self.position = (self.position + 1) % len(self.tasks)
            return task
        u = self.rng.random()
        cumulative = 0.0
        probs = self.probabilities()
        for t in self.tasks:
            cumulative += probs[t]
            if u < cumulative:
                return t
        return self.tasks[-1]  # u within rounding of 1.0

    def update(self, val_losses: dict[str, float]):
        """Record each task's latest validation loss (dynamic uses the last two; others ignore them)."""
        for t, loss in val_losses.items():
            if t not in self.losses:
                raise ValueError(f"update: {t!r} is not a sampled task; tasks: {self.tasks}")
            if not math.isfinite(loss) or loss < 0:
                raise ValueError(f"update: task {t!r} has validation loss {loss}; it must be finite and >= 0")
            self.losses[t] = (self.losses[t] + [float(loss)])[-2:]

    def split_batch(self, batch_size: int) -> dict[str, int]:
        """Mixed steps: examples per task summing to batch_size, ∝ probabilities, at least 1 each."""
        k = len(self.tasks)
        if batch_size < k:
            raise ValueError(f"a mixed batch of {batch_size} cannot hold one example of each of {k} tasks; "
                             f"raise train.batch_size to at least {k}")
        probs = self.probabilities()
        shares = {t: round(batch_size * probs[t], 9) for t in self.tasks}  # round: exact ties stay ties
        counts = {t: max(1, math.floor(shares[t])) for t in self.tasks}
        while sum(counts.values()) > batch_size:  # the minimum of one took examples from the largest
            counts[max(self.tasks, key=lambda t: counts[t])] -= 1
        remainders = {t: shares[t] - counts[t] if counts[t] == math.floor(shares[t]) else 0.0 for t in self.tasks}
        left = batch_size - sum(counts.values())
        for t in sorted(self.tasks, key=lambda t: (-remainders[t], self.tasks.index(t)))[:left]:
            counts[t] += 1
        return counts

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"strategy": self.strategy, "tasks": list(self.tasks), "position": self.position,
                "losses": {t: list(v) for t, v in self.losses.items()},
                "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict):
        if state["tasks"] != self.tasks or state["strategy"] != self.strategy:
            raise ValueError(f"sampler state is for {state['strategy']} over {state['tasks']}, "
                             f"not {self.strategy} over {self.tasks}")
        self.position = state["position"]
        self.losses = {t: list(v) for t, v in state["losses"].items()}
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
