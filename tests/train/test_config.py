import pytest
import yaml

from polyhead.train.config import TrainConfig


def base_config(tmp_path) -> dict:
    return {
        "output_dir": "out",
        "tasks": [
            {"name": "sentiment", "kind": "classify", "labels": ["negative", "neutral", "positive"],
             "data": {"train": "s/train.jsonl", "validation": "s/val.jsonl"}},
            {"name": "ner", "kind": "tag", "labels": ["PER", "ORG"], "data": {"train": "n/train.jsonl"}},
            {"name": "chat", "kind": "generate", "data": {"train": "c.jsonl"}},
            {"name": "pairs", "kind": "embed", "pooling": "mean", "data": {"train": "p.jsonl"}},
        ],
        "train": {"steps": 10, "lora": {"r": 4}},
    }


def write(tmp_path, data) -> str:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_from_yaml_builds_nested_config_and_resolves_paths(tmp_path):
    data = base_config(tmp_path)
    data["tasks"][0]["lora"] = {"r": 16, "targets": ["q_proj"]}
    config = TrainConfig.from_yaml(write(tmp_path, data))
    assert [t.name for t in config.tasks] == ["sentiment", "ner", "chat", "pairs"]
    assert config.tasks[0].data.train == str(tmp_path / "s/train.jsonl")
    assert config.tasks[0].data.test is None
    assert config.output_dir == "out"  # relative to where training runs, not to the YAML
    assert config.train.lora.r == 4 and config.train.mode == "heads"
    assert config.lora_for("sentiment").r == 16 and config.lora_for("ner").r == 4
    assert config.sampling.strategy == "temperature" and config.weighting.strategy == "static"
    assert config.static_weights() == {"sentiment": 1.0, "ner": 1.0, "chat": 1.0, "pairs": 1.0}
    # tag labels given as entity types become the full BIO set
    assert config.tasks[1].labels == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"]
    assert config.tasks[1].entity_types == ["PER", "ORG"]
    assert TrainConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_bio_labels_given_in_full_are_kept_in_canonical_order(tmp_path):
    data = base_config(tmp_path)
    data["tasks"][1]["labels"] = ["I-ORG", "O", "B-ORG", "B-PER", "I-PER"]
    config = TrainConfig.from_dict(data)
    assert config.tasks[1].labels == ["O", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.mark.parametrize("path, value, field_path", [
    (("tasks", 1, "labels"), [], "tasks[1].labels"),
    (("tasks", 1, "labels"), ["O", "B-PER"], "tasks[1].labels"),  # I-PER missing
    (("tasks", 1, "labels"), ["PER", "B-ORG"], "tasks[1].labels"),  # types and BIO mixed
    (("tasks", 0, "labels"), ["a", "a"], "tasks[0].labels"),
    (("tasks", 2, "labels"), ["x"], "tasks[2].labels"),
    (("tasks", 0, "kind"), "regress", "tasks[0].kind"),
    (("tasks", 3, "pooling"), "max", "tasks[3].pooling"),
    (("tasks", 0, "max_length"), "64", "tasks[0].max_length"),
    (("tasks", 0, "max_length"), 2, "tasks[0].max_length"),
    (("tasks", 0, "data"), {"validation": "v.jsonl"}, "tasks[0].data.train"),
    (("tasks", 0, "lbl_column"), "x", "tasks[0].lbl_column"),  # typo
    (("tasks", 2, "name"), "sentiment", "tasks[2].name"),  # duplicate
    (("tasks", 0, "name"), "a b", "tasks[0].name"),
    (("train", "mode"), "partial", "train.mode"),
    (("train", "lora", "r"), 0, "train.lora.r"),
    (("train", "optimizer", "lr"), -1, "train.optimizer.lr"),
    (("train", "optimizer", "name"), "sgd", "train.optimizer.name"),
    (("train", "schedule", "name"), "step", "train.schedule.name"),
    (("train", "epochs"), 2, "train.steps"),  # both steps and epochs
    (("train", "dtype"), "float16", "train.dtype"),
    (("train", "batch_size"), 0, "train.batch_size"),
    (("train", "best_metric"), "nosuch.accuracy", "train.best_metric"),
    (("train", "bach_size"), 4, "train.bach_size"),
    (("sampling", "strategy"), "greedy", "sampling.strategy"),
    (("sampling", "temperature"), 0, "sampling.temperature"),
    (("sampling", "mixed"), "yes", "sampling.mixed"),
    (("weighting", "strategy"), "magic", "weighting.strategy"),
    (("weighting", "weights"), {"nosuch": 1.0}, "weighting.weights.nosuch"),
    (("weighting", "weights"), {"ner": -1.0}, "weighting.weights.ner"),
    (("distill",), {"teacher": "t", "alpha": 2.0}, "distill.alpha"),
    (("distill",), {"teacher": "t", "tasks": ["ner", "nosuch"]}, "distill.tasks[1]"),
    (("distill",), {"alpha": 0.5}, "distill.teacher"),
    (("backbon",), "x", "backbon"),
])
def test_errors_name_the_field(tmp_path, path, value, field_path):
    data = base_config(tmp_path)
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError) as err:
        TrainConfig.from_yaml(write(tmp_path, data))
    assert f"{field_path}:" in str(err.value)
    assert "train.yaml" in str(err.value)


def test_weight_set_twice_and_gradnorm_without_mixed_are_errors(tmp_path):
    data = base_config(tmp_path)
    data["tasks"][1]["weight"] = 2.0
    data["weighting"] = {"weights": {"ner": 3.0}}
    with pytest.raises(ValueError, match=r"tasks\[1\].weight"):
        TrainConfig.from_dict(data)
    data["tasks"][1].pop("weight")
    assert TrainConfig.from_dict(data).static_weights()["ner"] == 3.0
    data["weighting"] = {"strategy": "gradnorm"}
    with pytest.raises(ValueError, match="sampling.mixed"):
        TrainConfig.from_dict(data)
    data["sampling"] = {"mixed": True}
    assert TrainConfig.from_dict(data).weighting.strategy == "gradnorm"


def test_unreadable_yaml_and_non_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tasks: [\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ValueError, match=r"tasks\[0\]: must be a mapping"):
        TrainConfig.from_dict({"tasks": ["sentiment"], "train": {"steps": 1}})
