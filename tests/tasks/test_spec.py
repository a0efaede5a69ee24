"""TaskSpec validation, manifests and task packs round-trip."""

import pytest
import torch

from polyhead.models.heads import ClassifyHead, load_head, save_head
from polyhead.tasks.manifest import load_manifest, load_pack, save_manifest, save_pack
from polyhead.tasks.spec import TaskSpec


def test_bad_specs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        TaskSpec(name="x", kind="translate")
    with pytest.raises(ValueError, match="needs labels"):
        TaskSpec(name="x", kind="classify")
    with pytest.raises(ValueError, match="needs a trained head"):
        TaskSpec(name="x", kind="tag", labels=["O", "B-PER"])
    with pytest.raises(ValueError, match=r"must contain \{input\}"):
        TaskSpec(name="x", kind="generate", prompt_template="no slot")
    with pytest.raises(ValueError, match="unknown fields"):
        TaskSpec.from_dict({"name": "x", "kind": "generate", "temprature": 0.5})
    with pytest.raises(ValueError, match="letters, digits"):
        TaskSpec(name="a b", kind="generate")


def test_zero_shot_and_pooling_kinds():
    zero = TaskSpec(name="s", kind="classify", labels=["neg", "pos"], verbalizers={"neg": "negative"})
    assert zero.is_zero_shot and not zero.is_pooling and zero.verbalizer("neg") == "negative"
    assert zero.verbalizer("pos") == "pos"
    assert TaskSpec(name="e", kind="embed").is_pooling
    assert TaskSpec(name="t", kind="generate", prompt_template="Say: {input}").render("hi") == "Say: hi"


def test_pack_and_manifest_round_trip(tmp_path):
    head = ClassifyHead(8, 3)
    pack = tmp_path / "packs" / "sentiment"
    pack.mkdir(parents=True)
    save_head(head, pack / "head.safetensors")
    spec = TaskSpec(name="sentiment", kind="classify", labels=["neg", "neu", "pos"],
                    head=str(pack / "head.safetensors"), pooling="mean")
    save_pack(spec, pack)
    assert "head: head.safetensors" in (pack / "task.yaml").read_text()  # relative inside the pack
    chat = TaskSpec(name="chat", kind="generate")
    manifest = save_manifest([chat, spec], tmp_path / "tasks.yaml", packs={"sentiment": pack})
    loaded = load_manifest(manifest)
    assert [s.name for s in loaded] == ["chat", "sentiment"]
    assert loaded[1] == load_pack(pack) and loaded[1].pooling == "mean"
    back = load_head(loaded[1].head, "classify", 3, 8)
    torch.testing.assert_close(back.linear.weight, head.linear.weight)


def test_manifest_errors_name_the_entry(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text("tasks:\n  - {name: a, kind: generate}\n  - {name: a, kind: generate}\n")
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        load_manifest(path)
    path.write_text("tasks:\n  - {name: b, kind: classify, labels: [x], head: missing.safetensors}\n")
    with pytest.raises(ValueError, match=r"tasks\[0\].*head file"):
        load_manifest(path)
    path.write_text("tasks: [")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_manifest(path)


def test_head_shape_is_checked(tmp_path):
    save_head(ClassifyHead(8, 3), tmp_path / "h.safetensors")
    with pytest.raises(ValueError, match="for 4 labels"):
        load_head(tmp_path / "h.safetensors", "classify", 4, 8)
