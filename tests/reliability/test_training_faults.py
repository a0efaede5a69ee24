"""Training under faults, with real `polyhead train` processes on a tiny random backbone:
`kill -9` in the middle of a checkpoint write, and a DDP rank killed mid-run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from polyhead.train.checkpoint import CHECKPOINT_DIR, PAUSE_ENV, latest_checkpoint, load_checkpoint
from tests.conftest import make_tiny_model
from tests.train.tiny_run import write_run_config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-fault-llama")
    make_tiny_model(folder, "llama", num_layers=2)
    return folder


@pytest.fixture
def train(tmp_path):
    """Start `polyhead train CONFIG ...` (output to a log file); whatever still runs at the end of the
    test is killed, torchrun's ranks included (they run in sessions of their own)."""
    started = []

    def start(config: Path, *extra: str, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "polyhead.cli", "train", str(config), "--no-progress", "--threads", "1", *extra]
        with open(log or os.devnull, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env or ENV, stdout=out, stderr=subprocess.STDOUT)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        for pid in [*_descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def _wait_for(predicate, proc: subprocess.Popen, log: Path, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"exited with {proc.returncode} before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.1)


@pytest.mark.timeout(60)
def test_kill_during_a_checkpoint_write_keeps_the_previous_one_and_resume_reaches_the_uninterrupted_run(
        backbone, tmp_path, train):
    # checkpoints at steps 3, 6, 9; the writer of step-6.pt is killed half-way
    configs = [write_run_config(tmp_path / name, backbone, ["sentiment", "topic"], mode="lora", steps=9,
                                eval_every=3, checkpoint_every=3) for name in ("whole", "killed")]
    whole = train(configs[0])
    log = tmp_path / "killed.log"
    killed = train(configs[1], env={**ENV, PAUSE_ENV: "step-6.pt:60"}, log=log)
    _wait_for(lambda: "paused writing" in log.read_text(), killed, log, "checkpoint write of step 6")
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=10) == -signal.SIGKILL

    run = tmp_path / "killed" / "run"
    assert latest_checkpoint(run) == run / CHECKPOINT_DIR / "step-3.pt"  # not the torn step 6
    assert load_checkpoint(latest_checkpoint(run))["step"] == 3
    torn = list((run / CHECKPOINT_DIR).glob(".step-6.pt.*.tmp"))
    assert len(torn) == 1 and torn[0].stat().st_size > 0  # the kill did land inside the write

    resumed = train(configs[1], "--resume", log=log)
    assert resumed.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert whole.wait(timeout=60) == 0
    assert not torn[0].exists()  # the next write cleared the dead writer's temp file

    # float32 on one thread, data order, samplers and RNG restored: equal bit for bit
    end_a, end_b = (load_checkpoint(latest_checkpoint(tmp_path / name / "run")) for name in ("whole", "killed"))
    assert end_a["step"] == end_b["step"] == 9
    assert end_a["model"].keys() == end_b["model"].keys()
    for name, value in end_a["model"].items():
        torch.testing.assert_close(end_b["model"][name], value, atol=0, rtol=0)
    for key, state in end_a["optimizer"]["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(end_b["optimizer"]["state"][key][name], value, atol=0, rtol=0)
    def logged(history):  # every training loss and evaluation; a resume adds its own "start" record
        return [r for r in history if r["type"] != "start"]

    assert logged(end_a["history"]) == logged(end_b["history"])
    assert [r["step"] for r in end_b["history"] if r["type"] == "start"] == [0, 3]
    results = [json.loads((tmp_path / name / "run" / "results.json").read_text()) for name in ("whole", "killed")]
    assert results[0]["splits"] == results[1]["splits"] and results[0]["best"] == results[1]["best"]


def _descendants(root_pid: int) -> set[int]:
    """Every process below root_pid (from /proc: each one's parent)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    below = {root_pid}
    for _ in range(3):  # polyhead -> torchrun -> ranks
        below |= {pid for pid, ppid in parents.items() if ppid in below}
    return below - {root_pid}


def _ranks(root_pid: int) -> dict[int, int]:
    """{rank: pid} of the torchrun workers below root_pid (their RANK variable)."""
    found = {}
    for pid in _descendants(root_pid):
        try:
            env = dict(v.split("=", 1) for v in (Path(f"/proc/{pid}/environ").read_text().split("\0")) if "=" in v)
        except OSError:
            continue
        if "LOCAL_RANK" in env:
            found[int(env["RANK"])] = pid
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("victim", [0, 1])
def test_a_ddp_rank_killed_mid_run_ends_the_run_with_an_error_naming_it(backbone, tmp_path, train, victim):
    config = write_run_config(tmp_path, backbone, ["sentiment", "topic"], mode="lora", steps=100_000, eval_every=0,
                              checkpoint_every=0)
    log = tmp_path / "ddp.log"
    proc = train(config, "--nproc", "2", log=log)
    metrics = tmp_path / "run" / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and metrics.read_text().count('"type": "train"') >= 3, proc, log,
              "3 training steps")
    ranks = _ranks(proc.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[victim], signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        status = proc.wait(timeout=20)  # not the 30 min of a process group's timeout, nor torchrun's 30 s grace
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run still runs 20 s after rank {victim} was killed:\n{log.read_text()[-3000:]}")
    elapsed = time.monotonic() - killed_at
    out = log.read_text()
    assert status != 0, out[-3000:]
    assert f"rank      : {victim} (local_rank: {victim})\n  exitcode  : -9" in out, out[-3000:]
    assert "Signal 9 (SIGKILL) received" in out and "polyhead train: torchrun ended the run" in out
    survivor = ranks[1 - victim]
    assert not Path(f"/proc/{survivor}").exists() or "Z" in Path(f"/proc/{survivor}/stat").read_text().split()[2]
    print(f"rank {victim} killed: the run exited {status} after {elapsed:.1f} s")
