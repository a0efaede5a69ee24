import pytest

from polyhead.train.batching import (
    MultiTaskBatches,
    RankShardSampler,
    TaskBatchIterator,
    eval_batches,
    num_train_steps,
    shard_indices,
)
from polyhead.train.config import DataFiles, TaskConfig, TrainConfig
from polyhead.train.data import TaskDataset
from polyhead.train.encode import Example


def dataset(name: str, n: int) -> TaskDataset:
    """n classify examples whose single token id is their index (so batches show which rows they hold)."""
    task = TaskConfig(name=name, kind="classify", data=DataFiles(train="x"), labels=["a", "b"])
    return TaskDataset(task, "train", [Example(input_ids=[i] * (1 + i % 3), labels=i % 2) for i in range(n)])


def rows(batch) -> list[int]:
    return batch.input_ids[:, 0].tolist()


def test_rank_shards_are_disjoint_and_cover_each_epoch():
    for epoch in range(3):
        shards = [shard_indices(10, r, 3, seed=5, epoch=epoch) for r in range(3)]
        assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert shard_indices(10, 0, 1, 5, 0) != shard_indices(10, 0, 1, 5, 1)  # reshuffled each epoch
    with pytest.raises(ValueError, match="rank 3"):
        shard_indices(10, 3, 3, 0, 0)


def test_iterator_runs_over_epochs_with_full_batches_and_resumes():
    ds = dataset("t", 10)
    its = [TaskBatchIterator(ds, 4, pad_token_id=0, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = [rows(its[r].next_batch()) for r in range(2)]  # 4 + 4 of epoch 0's 10
    assert not set(seen[0]) & set(seen[1])
    second = rows(its[0].next_batch())  # 1 left in rank 0's shard of 5, then 3 of epoch 1
    assert len(second) == 4 and its[0].epoch == 1 and its[0].position == 3
    state = its[0].state_dict()
    future = [rows(its[0].next_batch(3)) for _ in range(5)]
    resumed = TaskBatchIterator(ds, 4, pad_token_id=0, seed=1, rank=0, world_size=2)
    resumed.load_state_dict(state)
    assert [rows(resumed.next_batch(3)) for _ in range(5)] == future
    with pytest.raises(ValueError, match="fewer than the 4 ranks"):
        TaskBatchIterator(dataset("t", 3), 2, 0, world_size=4)


def test_multitask_steps_single_and_mixed():
    data = {"a": dataset("a", 30), "b": dataset("b", 10)}
    tasks = [TaskConfig(name=n, kind="classify", data=DataFiles(train="x"), labels=["a", "b"]) for n in data]
    config = TrainConfig(tasks=tasks)
    config.train.batch_size = 8
    config.sampling.strategy = "round_robin"
    batches = MultiTaskBatches.from_config(config, data, pad_token_id=0)
    steps = [batches.next_step() for _ in range(4)]
    assert [[b.task for b in s] for s in steps] == [["a"], ["b"], ["a"], ["b"]]
    assert all(s[0].size == 8 for s in steps)
    state = batches.state_dict()
    future = [[(b.task, rows(b)) for b in batches.next_step()] for _ in range(6)]
    again = MultiTaskBatches.from_config(config, data, pad_token_id=0)
    again.load_state_dict(state)
    assert [[(b.task, rows(b)) for b in again.next_step()] for _ in range(6)] == future
    config.sampling.mixed, config.sampling.strategy = True, "proportional"
    mixed = MultiTaskBatches.from_config(config, data, pad_token_id=0).next_step()
    assert [(b.task, b.size) for b in mixed] == [("a", 6), ("b", 2)]  # 8 split 3:1


def test_eval_batches_cover_the_split_once_across_ranks():
    ds = dataset("t", 7)
    per_rank = [[i for b in eval_batches(ds, 2, 0, rank=r, world_size=2) for i in rows(b)] for r in range(2)]
    assert per_rank == [[0, 2, 4, 6], [1, 3, 5]]


def test_num_train_steps_from_epochs():
    tasks = [TaskConfig(name="a", kind="classify", data=DataFiles(train="x"), labels=["a", "b"])]
    config = TrainConfig(tasks=tasks)
    config.train.steps = 40
    assert num_train_steps(config, {"a": 100}) == 40
    config.train.steps, config.train.epochs, config.train.batch_size = None, 2.0, 16
    assert num_train_steps(config, {"a": 100, "b": 330}, world_size=2) == 21  # ceil(2 * 330 / 32)


def test_length_grouping_pads_less_and_still_covers_each_epoch_and_resumes():
    ds = TaskDataset(dataset("t", 1).task, "train",
                     [Example(input_ids=[i] * (1 + (i * 7) % 23), labels=0) for i in range(96)])
    plain = TaskBatchIterator(ds, 8, pad_token_id=0, seed=3)
    grouped = TaskBatchIterator(ds, 8, pad_token_id=0, seed=3, length_grouping=4)

    def padded_tokens(it):
        return sum(b.input_ids.numel() for b in (it.next_batch() for _ in range(12)))

    assert padded_tokens(grouped) < 0.8 * padded_tokens(plain)  # 12 batches = one epoch each
    assert grouped.epoch == 0 and grouped.position == 96
    epoch = [i for _ in range(12) for i in rows(grouped.next_batch())]  # epoch 1, grouped
    assert sorted(epoch) == list(range(96))
    lengths = [len(ds[i].input_ids) for i in epoch[:32]]
    assert lengths == sorted(lengths)  # the first run of 4 batches, ascending
    state = grouped.state_dict()
    future = [rows(grouped.next_batch(5)) for _ in range(30)]
    again = TaskBatchIterator(ds, 8, pad_token_id=0, seed=3, length_grouping=4)
    again.load_state_dict(state)
    assert [rows(again.next_batch(5)) for _ in range(30)] == future


def test_rank_shard_sampler_with_a_dataloader():
    from functools import partial

    from torch.utils.data import DataLoader

    from polyhead.train.data import collate

    ds = dataset("t", 10)
    seen = []
    for rank in range(2):
        sampler = RankShardSampler(len(ds), rank, 2, seed=4)
        sampler.set_epoch(1)
        loader = DataLoader(ds, batch_size=3, sampler=sampler, collate_fn=partial(collate, pad_token_id=0, task="t"))
        got = [i for batch in loader for i in rows(batch)]
        assert got == shard_indices(10, rank, 2, seed=4, epoch=1) and len(sampler) == 5
        seen += got
    assert sorted(seen) == list(range(10))
