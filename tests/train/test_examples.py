"""The example configs and data in examples/: they parse, load with the default tokenizer, and the
committed files are exactly what the seeded generator writes."""

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from polyhead.train.config import TrainConfig
from polyhead.train.data import TaskDataset, load_datasets

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SIZES = {"sentiment": (720, 120, 120), "topic": (720, 120, 120), "ner": (480, 80, 80),  # as in examples/README.md
         "paraphrase": (400, 60, 60), "extract": (360, 60, 60)}


def test_generator_reproduces_the_committed_data(tmp_path):
    subprocess.run([sys.executable, str(EXAMPLES / "make_data.py"), str(tmp_path)], check=True,
                   capture_output=True)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.*"))
    committed = sorted(p.relative_to(EXAMPLES / "data") for p in (EXAMPLES / "data").rglob("*.*"))
    assert written == committed and len(written) == 18
    for rel in written:
        assert filecmp.cmp(tmp_path / rel, EXAMPLES / "data" / rel, shallow=False), rel


@pytest.mark.parametrize("name, tasks", [("multitask.yaml", ["sentiment", "topic", "ner"]),
                                         ("multitask-lora.yaml", ["sentiment", "topic", "ner"]),
                                         ("four-kinds.yaml", ["sentiment", "ner", "extract", "paraphrase"])])
def test_example_configs_load_all_splits(name, tasks, smol_tokenizer, tmp_path):
    config = TrainConfig.from_yaml(EXAMPLES / name)
    assert [t.name for t in config.tasks] == tasks
    data = load_datasets(config, smol_tokenizer, cache_dir=tmp_path)
    for task in config.tasks:
        assert tuple(len(data[task.name][s]) for s in ("train", "validation", "test")) == SIZES[task.name]
        for ds in data[task.name].values():
            assert max(len(e.input_ids) for e in ds) <= task.max_length
            assert max(len(e.positive_ids or []) for e in ds) <= task.max_length
    if "topic" in data:
        assert {e.labels for e in data["topic"]["train"]} == set(range(6))
    assert {t for e in data["ner"]["train"] for t in e.labels if t >= 0} == set(range(9))
    if "extract" in data:  # no response was cut: every example ends with the eos token
        assert all(e.input_ids[-1] == smol_tokenizer.eos_token_id for e in data["extract"]["train"])
        assert all(e.labels[-1] == smol_tokenizer.eos_token_id for e in data["extract"]["train"])


def test_sentiment_csv_equals_jsonl(smol_tokenizer, tmp_path):
    config = TrainConfig.from_yaml(EXAMPLES / "multitask.yaml")
    task = config.task("sentiment")
    assert task.data.train.endswith("train.csv")
    from_csv = TaskDataset.load(task, "test", smol_tokenizer, tmp_path)
    task.data.test = task.data.test.replace(".csv", ".jsonl")
    from_jsonl = TaskDataset.load(task, "test", smol_tokenizer, tmp_path)
    assert [vars(e) for e in from_csv] == [vars(e) for e in from_jsonl]
