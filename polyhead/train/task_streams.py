"""What the trainer draws from each step: the task(s), this rank's batch of each, the loss weights.

TaskStreams ties together the data pieces — the tokenized datasets (data.py), the rank-sharded,
resumable batch streams and the task sampler (batching.py, sampling.py) and the loss weighting
(weighting.py) — over the tasks that have something to train. Every rank builds the same sampler
from the same seed and updates it with the same validation losses, so all ranks pick the same task
at every step.
"""

import torch

from polyhead.train.batching import MultiTaskBatches, num_train_steps
from polyhead.train.data import load_datasets
from polyhead.train.distributed import DistContext
from polyhead.train.sampling import TaskSampler


class TaskStreams:
    def __init__(self, config, tokenizer, ctx: DistContext, trainable: list[str]):
        if not trainable:
            raise ValueError("nothing to train: in train.mode heads a generate task has no head; "
                             "use mode lora or full, or add a classify / tag / embed task")
        self.config, self.ctx, self.trainable = config, ctx, trainable
        self.datasets = load_datasets(config, tokenizer)  # {task: {split: TaskDataset}}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        train = {name: self.datasets[name]["train"] for name in trainable}
        sizes = {name: len(ds) for name, ds in train.items()}
        sampler = TaskSampler.from_config(config.sampling, sizes, config.train.seed)
        self.batches = MultiTaskBatches(train, sampler, config.train.batch_size, pad, config.sampling.mixed,
                                        config.train.seed, ctx.rank, ctx.world_size, config.train.length_grouping)
        self.sampler = sampler
        self.weighting = _make_weighting(config, trainable)
        self.total_steps = num_train_steps(config, sizes, ctx.world_size)

    def next_batches(self) -> list:
        """This micro-step's batches: one task's, or (sampling.mixed) one per task sized by the sampler."""
        return self.batches.next_step()

    def combine(self, losses: dict[str, torch.Tensor], model) -> torch.Tensor:
        """{task: loss} -> the loss to backpropagate; GradNorm first steps its task weights on the
        gradient norms at the last backbone layer's trainable weights (shared in mode full; in mode
        lora, each task's adapter there)."""
        if self.config.weighting.strategy == "gradnorm":
            self.weighting.update(losses, model.last_layer_parameters())
        return self.weighting.combine(losses)

    def weighting_parameters(self) -> list[torch.nn.Parameter]:
        """Learned loss weights the trainer's optimizer steps (uncertainty's log-variances)."""
        return list(self.weighting.trainable_parameters())

    def end_epoch(self) -> None:
        """DWA's epoch boundary: the trainer calls it at every evaluation (an epoch in which the
        sampler has not yet drawn every task goes on until it has)."""
        counts = getattr(self.weighting, "counts", None)
        if counts is None or all(counts.get(t) for t in self.trainable):
            self.weighting.end_epoch()

    def loss_weights(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.weighting.weights().items()}

    def update_sampler(self, val_losses: dict[str, float]) -> None:
        self.sampler.update({k: v for k, v in val_losses.items() if k in self.trainable})

    def split(self, name: str) -> dict:
        return {task: splits[name] for task, splits in self.datasets.items() if name in splits}

    def state_dict(self) -> dict:
        """Identical on every rank: the loss weighting."""
        return {"weighting": self.weighting.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.weighting.load_state_dict(state["weighting"])

    def data_state(self) -> dict:
        """This rank's position in every task's stream, and the sampler (the same on every rank)."""
        return self.batches.state_dict()

    def load_data_state(self, state: dict) -> None:
        self.batches.load_state_dict(state)


def _make_weighting(config, tasks: list[str]):
    """The configured weighting over the tasks that train (mode heads leaves generate tasks out)."""
    import copy

    from polyhead.train.weighting import build_weighting

    trained = copy.copy(config)
    trained.tasks = [t for t in config.tasks if t.name in tasks]
    return build_weighting(trained)
