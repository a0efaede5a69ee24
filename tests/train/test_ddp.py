"""Data parallel: 2 real processes (torchrun, gloo on 127.0.0.1) end with the same parameters as one
process trained on the same global batches (each step: rank 0's batch + rank 1's batch)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from polyhead.train.batching import MultiTaskBatches
from polyhead.train.checkpoint import latest_checkpoint, load_checkpoint
from polyhead.train.config import TrainConfig
from polyhead.train.data import Batch
from polyhead.train.distributed import DistContext
from polyhead.train.sampling import TaskSampler
from polyhead.train.trainer import Trainer
from tests.conftest import free_port
from tests.train.tiny_run import write_run_config

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4


def _concat(a: Batch, b: Batch, pad: int) -> Batch:
    """Two ranks' batches of one task -> the global batch (right-padded to the wider one)."""
    assert a.task == b.task, "every rank must draw the same task each step"
    width = max(a.input_ids.shape[1], b.input_ids.shape[1])

    def widen(t, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return Batch(a.task, torch.cat([widen(a.input_ids, pad), widen(b.input_ids, pad)]),
                 torch.cat([widen(a.attention_mask, 0), widen(b.attention_mask, 0)]), torch.cat([a.labels, b.labels]))


def test_two_processes_equal_one_process_on_the_global_batches(tiny_folder, tmp_path):
    config_path = write_run_config(tmp_path, tiny_folder, ["sentiment", "topic"], mode="lora", steps=STEPS,
                                   batch_size=3, grad_accumulation=2, eval_every=0, checkpoint_every=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "polyhead.train", str(config_path), "--no-progress"]
    done = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp_state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert ddp_state["step"] == STEPS and ddp_state["world_size"] == 2

    config = TrainConfig.from_yaml(config_path)
    config.output_dir = str(tmp_path / "single")
    single = Trainer(config, ctx=DistContext(), show_progress=False)
    train = {name: single.streams.datasets[name]["train"] for name in single.streams.trainable}
    sizes = {name: len(ds) for name, ds in train.items()}
    ranks = [MultiTaskBatches(train, TaskSampler.from_config(config.sampling, sizes, config.train.seed),
                              config.train.batch_size, single.pad_token_id, False, config.train.seed, rank, 2)
             for rank in range(2)]
    single.streams.next_batches = lambda: [_concat(ranks[0].next_step()[0], ranks[1].next_step()[0],
                                                   single.pad_token_id)]
    single.train()
    single_state = load_checkpoint(latest_checkpoint(tmp_path / "single"))
    assert single_state["step"] == STEPS
    assert ddp_state["model"].keys() == single_state["model"].keys()
    moved = 0
    for name, value in single_state["model"].items():
        torch.testing.assert_close(ddp_state["model"][name], value, atol=2e-5, rtol=1e-4)
        moved += not torch.equal(value, single.model.trainable_state_dict()[name]) or "lora_B" in name
    assert moved  # the comparison is over trained weights, not untouched ones
    lora_b = [v for k, v in ddp_state["model"].items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b)  # adapters were trained (they start at zero)
