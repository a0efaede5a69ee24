"""The training loop end to end on a tiny backbone: outputs of a run, exact resume, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from polyhead.tasks.manifest import load_manifest
from polyhead.train.checkpoint import latest_checkpoint, load_checkpoint
from polyhead.train.config import TrainConfig
from polyhead.train.trainer import Trainer, TrainingInterrupted
from tests.train.tiny_run import write_run_config

ROOT = Path(__file__).resolve().parents[2]


def test_a_run_writes_results_packs_plot_and_metrics(tiny_folder, tmp_path):
    config = TrainConfig.from_yaml(write_run_config(tmp_path, tiny_folder, ["sentiment", "ner", "reply", "pairs"],
                                                    mode="lora", steps=6,
                                                    sampling={"strategy": "round_robin"}))
    results = Trainer(config, show_progress=False).train()
    run = Path(config.output_dir)
    assert set(results["test"]) == {"sentiment", "ner", "reply", "pairs"}
    assert 0 <= results["test"]["ner"]["span_f1"] <= 1 and results["test"]["reply"]["perplexity"] > 1
    saved = json.loads((run / "results.json").read_text())
    assert saved["parameters"]["trainable"] < saved["parameters"]["total"] and saved["steps"] == 6
    specs = {s.name: s for s in load_manifest(run / "tasks.yaml")}
    assert specs["ner"].labels == ["O", "B-PER", "I-PER"] and specs["sentiment"].adapter is not None
    assert (run / "loss_curves.png").stat().st_size > 1000
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6] and "loss_weights" in evals[0]
    assert {r["task"] for r in records if r["type"] == "train"} == {"sentiment", "ner", "reply", "pairs"}


def test_resume_continues_to_the_same_parameters(tiny_folder, tmp_path):
    cfg_a = TrainConfig.from_yaml(write_run_config(tmp_path / "a", tiny_folder, ["sentiment", "topic"],
                                                   mode="lora", steps=8, eval_every=2, checkpoint_every=0,
                                                   log_every=3))
    cfg_b = TrainConfig.from_yaml(write_run_config(tmp_path / "b", tiny_folder, ["sentiment", "topic"],
                                                   mode="lora", steps=8, eval_every=2, checkpoint_every=0,
                                                   log_every=3))
    whole = Trainer(cfg_a, show_progress=False)
    whole.train()
    first = Trainer(cfg_b, show_progress=False)
    with pytest.raises(TrainingInterrupted):
        first.train(stop_at_step=5)  # mid-way between evaluations, with the sampler and RNG mid-stream
    assert load_checkpoint(latest_checkpoint(Path(cfg_b.output_dir)))["step"] == 5
    second = Trainer(cfg_b, resume=True, show_progress=False)
    second.train()
    assert second.step == whole.step == 8
    last_a = load_checkpoint(latest_checkpoint(Path(cfg_a.output_dir)))
    last_b = load_checkpoint(latest_checkpoint(Path(cfg_b.output_dir)))
    assert last_a["step"] == last_b["step"] == 8
    for name, value in last_a["model"].items():
        torch.testing.assert_close(last_b["model"][name], value, atol=0, rtol=0)
    assert last_a["optimizer"]["state"].keys() == last_b["optimizer"]["state"].keys()
    losses = [(r["step"], r["task"], r["loss"]) for r in whole.history if r["type"] == "train"]
    assert losses == [(r["step"], r["task"], r["loss"]) for r in second.history if r["type"] == "train"]


def test_sigint_saves_a_checkpoint_and_exits(tiny_folder, tmp_path):
    config = write_run_config(tmp_path, tiny_folder, ["sentiment"], mode="heads", steps=100_000,
                              eval_every=0, checkpoint_every=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "polyhead.train", str(config), "--no-progress"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count('"type": "train"') >= 3):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert 3 <= state["step"] < 100_000 and state["optimizer"]["state"]


@pytest.mark.parametrize(("strategy", "mode", "mixed"), [("uncertainty", "heads", False), ("dwa", "heads", False),
                                                         ("gradnorm", "lora", True)])
def test_loss_weighting_strategies_train_and_log_their_weights(tiny_folder, tmp_path, strategy, mode, mixed):
    path = write_run_config(tmp_path, tiny_folder, ["sentiment", "topic"], mode=mode, steps=6, eval_every=2,
                            sampling={"strategy": "round_robin", "mixed": mixed})
    config = TrainConfig.from_yaml(path)
    config.weighting.strategy = strategy
    config.validate()
    trainer = Trainer(config, show_progress=False)
    trainer.train()
    weights = [r["loss_weights"] for r in trainer.history if r["type"] == "eval"]
    assert len(weights) == 3 and set(weights[-1]) == {"sentiment", "topic"}
    assert weights[-1] != {"sentiment": 1.0, "topic": 1.0}  # the weights moved away from their start


def test_eval_command_reproduces_the_runs_test_table(tiny_folder, tmp_path, capsys):
    from polyhead.cli import main

    config = TrainConfig.from_yaml(write_run_config(tmp_path, tiny_folder, ["sentiment", "ner"], steps=3))
    Trainer(config, show_progress=False).train()
    run = Path(config.output_dir)
    assert main(["eval", str(run), "--split", "test"]) == 0
    assert "span_f1" in capsys.readouterr().out
    saved = json.loads((run / "eval-test.json").read_text())["tasks"]
    expected = json.loads((run / "results.json").read_text())["splits"]["test"]
    for task in ("sentiment", "ner"):
        for metric, value in expected[task].items():
            assert saved[task][metric] == pytest.approx(value, abs=1e-5)
    assert main(["eval", str(tmp_path), "--split", "test"]) == 2  # not a run folder: a clear error
    with pytest.raises(ValueError, match="--resume"):  # a finished run is not trained over by accident
        Trainer(config, show_progress=False).train()


def test_distill_from_a_trained_run(tiny_folder, tmp_path):
    teacher_config = TrainConfig.from_yaml(write_run_config(tmp_path / "teacher", tiny_folder, ["sentiment"],
                                                            mode="lora", steps=6))
    Trainer(teacher_config, show_progress=False).train()
    path = write_run_config(tmp_path / "student", tiny_folder, ["sentiment"], mode="heads", steps=4, eval_every=0)
    config = TrainConfig.from_yaml(path)
    from polyhead.train.config import DistillConfig

    config.distill = DistillConfig(teacher=teacher_config.output_dir, temperature=2.0, alpha=1.0)
    config.validate()
    student = Trainer(config, show_progress=False)
    batch = student.streams.next_batches()[0]
    out = student.model([batch])[0]
    teacher_logits = student.teacher[0].logits("sentiment", batch.input_ids, batch.attention_mask)
    from polyhead.train.distill import kd_kl

    expected = kd_kl(out.logits, teacher_logits, 2.0)  # alpha 1: the loss is the soft term alone
    torch.testing.assert_close(student._task_loss(batch, out), expected)
    assert not torch.allclose(expected, out.loss)


def test_distill_a_generate_task_from_a_plain_backbone(tiny_folder, tmp_path):
    from polyhead.train.config import DistillConfig
    from polyhead.train.distill import distill_loss

    config = TrainConfig.from_yaml(write_run_config(tmp_path, tiny_folder, ["reply"], mode="lora", steps=2,
                                                    eval_every=0))
    config.distill = DistillConfig(teacher=str(tiny_folder), temperature=1.5, alpha=0.5)
    config.validate()
    trainer = Trainer(config, show_progress=False)
    batch = trainer.streams.next_batches()[0]
    with torch.no_grad():
        out = trainer.model([batch])[0]
        teacher = trainer.teacher[0].logits("reply", batch.input_ids, batch.attention_mask)  # [B, T, V]
        # LoRA B starts at zero: the student is still its base, the same backbone as the teacher
        torch.testing.assert_close(out.logits, teacher, atol=1e-5, rtol=1e-5)
        expected = distill_loss("generate", out.logits, teacher, out.loss, batch.labels, 1.5, 0.5)
        torch.testing.assert_close(trainer._task_loss(batch, out), expected)
        torch.testing.assert_close(expected, 0.5 * out.loss, atol=1e-5, rtol=1e-5)  # KL to itself is 0
    trainer.train()
    assert trainer.step == 2
