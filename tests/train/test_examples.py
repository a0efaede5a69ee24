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
SIZES = {"sentiment": (720, 120, 120), "topic": (720, 120, 120), "ner": (480, 80, 80)}  # as in examples/README.md


def test_generator_reproduces_the_committed_data(tmp_path):
    subprocess.run([sys.executable, str(EXAMPLES / "make_data.py"), str(tmp_path)], check=True,
                   capture_output=True)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.*"))
    committed = sorted(p.relative_to(EXAMPLES / "data") for p in (EXAMPLES / "data").rglob("*.*"))
    assert written == committed and len(written) == 12
    for rel in written:
        assert filecmp.cmp(tmp_path / rel, EXAMPLES / "data" / rel, shallow=False), rel


@pytest.mark.parametrize("name", ["multitask.yaml", "multitask-lora.yaml"])
def test_example_configs_load_all_splits(name, smol_tokenizer, tmp_path):
    config = TrainConfig.from_yaml(EXAMPLES / name)
    assert [t.name for t in config.tasks] == ["sentiment", "topic", "ner"]
    data = load_datasets(config, smol_tokenizer, cache_dir=tmp_path)
    for task in config.tasks:
        assert tuple(len(data[task.name][s]) for s in ("train", "validation", "test")) == SIZES[task.name]
        for ds in data[task.name].values():
            assert max(len(e.input_ids) for e in ds) <= task.max_length
    labels = {e.labels for e in data["topic"]["train"]}
    assert labels == set(range(6))
    ner_tags = {t for e in data["ner"]["train"] for t in e.labels if t >= 0}
    assert ner_tags == set(range(9))


def test_sentiment_csv_equals_jsonl(smol_tokenizer, tmp_path):
    config = TrainConfig.from_yaml(EXAMPLES / "multitask.yaml")
    task = config.task("sentiment")
    assert task.data.train.endswith("train.csv")
    from_csv = TaskDataset.load(task, "test", smol_tokenizer, tmp_path)
    task.data.test = task.data.test.replace(".csv", ".jsonl")
    from_jsonl = TaskDataset.load(task, "test", smol_tokenizer, tmp_path)
    assert [vars(e) for e in from_csv] == [vars(e) for e in from_jsonl]
