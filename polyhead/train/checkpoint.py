"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is one file, `<run>/checkpoints/step-<N>.pt` (`best.pt` for the best evaluation
so far), written to a temp file in the same folder, fsynced, renamed over the target and the
folder fsynced, so a crash, a `kill -9` or a power cut mid-write leaves the previous checkpoint as
it was and never a torn file under a checkpoint's name. It holds the trainable weights, the optimizer,
the LR schedule, the task sampler, the loss weighting, the data position of every task, the RNG
states (python, numpy, torch) and the metrics history.
"""

import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
BEST = "best.pt"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
_TEMP_FILE = re.compile(r"^\..+\.tmp$")
# Test seam (tests/reliability): "step-6.pt" or "step-6.pt:SECONDS" makes the writer of that file
# stop mid-write (the temp file half written and flushed) for SECONDS (default 60), having said so
# on stderr, so a test can kill the process inside the write window. Unset, nothing changes.
PAUSE_ENV = "POLYHEAD_CHECKPOINT_PAUSE"


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def atomic_torch_save(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, _pausing_writer(f, path.name, tmp))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a crash
    return path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _PausingWriter:
    """The PAUSE_ENV seam: passes writes through, and stops once after the first one."""

    def __init__(self, f, tmp: str, seconds: float):
        self.f, self.tmp, self.seconds, self.paused = f, tmp, seconds, False

    def write(self, data) -> int:
        written = self.f.write(data)
        if not self.paused:
            self.paused = True
            self.f.flush()
            print(f"polyhead: {PAUSE_ENV}: paused writing {self.tmp}", file=sys.stderr, flush=True)
            time.sleep(self.seconds)
        return written

    def flush(self) -> None:
        self.f.flush()


def _pausing_writer(f, name: str, tmp: str):
    target, _, seconds = os.environ.get(PAUSE_ENV, "").partition(":")
    return _PausingWriter(f, tmp, float(seconds or 60)) if target == name else f


def save_checkpoint(run_dir: Path, state: dict, keep_last: int = 2, best: bool = False) -> Path:
    """Write step-<state['step']>.pt (or best.pt); keep only the newest `keep_last` step files."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    for stale in _temp_files(folder):  # left by a process killed mid-write; only rank 0 writes here
        stale.unlink(missing_ok=True)
    path = atomic_torch_save(state, folder / (BEST if best else f"step-{state['step']}.pt"))
    if not best and keep_last > 0:
        for old in _step_files(folder)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    files = _step_files(Path(run_dir) / CHECKPOINT_DIR)
    return files[-1] if files else None


def load_checkpoint(path: Path) -> dict:
    if not Path(path).is_file():
        raise ValueError(f"checkpoint {str(path)!r} not found")
    # our own files: python/numpy RNG states are plain objects, not only tensors
    return torch.load(path, map_location="cpu", weights_only=False)


def _step_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if _TEMP_FILE.match(p.name)] if folder.is_dir() else []
