"""What the trainer draws from each step: the task(s), this rank's batch of each, the loss weights.

TaskStreams ties together traindata's pieces — the tokenized datasets (data.py), the task sampler
(sampling.py) and the loss weighting (weighting.py) — with one resumable, rank-sharded batch
iterator per task. Every rank builds the same sampler from the same seed and updates it with the
same validation losses, so all ranks pick the same task at every step.
"""

import math

import torch

from polyhead.train.data import collate, load_datasets
from polyhead.train.distributed import DistContext


class ShardedBatches:
    """One task's train split as an endless stream of this rank's batches.

    Each epoch is a fresh permutation seeded by (seed, epoch), cut to a multiple of world_size and
    dealt round-robin (rank r takes positions r, r + W, ...: DistributedSampler's rule), so the ranks
    see disjoint shards of equal size and together cover the epoch. State: (epoch, position).
    """

    def __init__(self, dataset, batch_size: int, pad_token_id: int, task: str, seed: int, rank: int = 0,
                 world_size: int = 1):
        if len(dataset) < world_size:
            raise ValueError(f"task {task!r} has {len(dataset)} training examples, fewer than {world_size} ranks")
        self.dataset, self.batch_size, self.pad_token_id, self.task = dataset, batch_size, pad_token_id, task
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.position = 0, 0
        self._order = self._shard(0)

    def _shard(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.dataset), generator=gen).tolist()
        usable = len(order) - len(order) % self.world_size
        return order[self.rank:usable:self.world_size]

    def indices(self) -> list[int]:
        """The next batch's example indices (crossing into the next epoch when this one runs out)."""
        out = []
        while len(out) < self.batch_size:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shard(self.epoch)
            take = self._order[self.position:self.position + self.batch_size - len(out)]
            out += take
            self.position += len(take)
        return out

    def next_batch(self):
        return collate([self.dataset[i] for i in self.indices()], self.pad_token_id, task=self.task)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shard(self.epoch)


class TaskStreams:
    def __init__(self, config, tokenizer, ctx: DistContext, trainable: list[str]):
        from polyhead.train.sampling import build_sampler
        from polyhead.train.weighting import build_weighting

        self.config, self.ctx, self.trainable = config, ctx, trainable
        self.datasets = load_datasets(config, tokenizer)  # {task: {split: TaskDataset}}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        batch_size, seed = config.train.batch_size, config.train.seed
        self.iterators = {
            name: ShardedBatches(self.datasets[name]["train"], batch_size, pad, name, seed + 7919 * i,
                                 ctx.rank, ctx.world_size)
            for i, name in enumerate(trainable)}
        sizes = {name: len(self.datasets[name]["train"]) for name in trainable}
        self.sampler = build_sampler(config, sizes)
        self.weighting = build_weighting(config, trainable)
        self.total_steps = self._total_steps(sizes)

    def _total_steps(self, sizes: dict[str, int]) -> int:
        settings = self.config.train
        if settings.steps is not None:
            return settings.steps
        per_step = settings.batch_size * settings.grad_accumulation * self.ctx.world_size
        return max(1, math.ceil(settings.epochs * max(sizes.values()) / per_step))

    def next_batches(self) -> list:
        """This micro-step's batches: one task's, or (sampling.mixed) one per task sized by the sampler."""
        if not self.config.sampling.mixed:
            task = self.sampler.next_task()
            return [self.iterators[task].next_batch()]
        sizes = self.sampler.mixed_sizes(self.config.train.batch_size)  # {task: examples this step}
        batches = []
        for task, size in sizes.items():
            if size > 0:
                it = self.iterators[task]
                it.batch_size = size
                batches.append(it.next_batch())
        return batches

    def combine(self, losses: dict[str, torch.Tensor], model) -> torch.Tensor:
        return self.weighting.combine(losses)

    def weighting_parameters(self) -> list[torch.nn.Parameter]:
        params = getattr(self.weighting, "parameters", None)
        return list(params()) if callable(params) else []

    def loss_weights(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.weighting.weights().items()}

    def update_sampler(self, val_losses: dict[str, float]) -> None:
        self.sampler.update({k: v for k, v in val_losses.items() if k in self.iterators})

    def split(self, name: str) -> dict:
        return {task: splits[name] for task, splits in self.datasets.items() if name in splits}

    def state_dict(self) -> dict:
        """Identical on every rank: the sampler and the weighting."""
        return {"sampler": self.sampler.state_dict(), "weighting": self.weighting.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.weighting.load_state_dict(state["weighting"])

    def data_state(self) -> dict:
        """This rank's position in every task's stream."""
        return {task: it.state_dict() for task, it in self.iterators.items()}

    def load_data_state(self, state: dict) -> None:
        for task, it in self.iterators.items():
            it.load_state_dict(state[task])
