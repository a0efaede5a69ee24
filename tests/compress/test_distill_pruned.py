"""A pruned student trains (distill from the full teacher) and its exported backbone loads back in
polyhead with the pruned sizes; per-layer sizes build the same transformers model as the engine's."""

import json

import pytest
import torch
import yaml

from polyhead.compress.calibration import forward_sequence
from polyhead.compress.prune import prune_model
from polyhead.compress.spec import PruneSpec
from polyhead.compress.transformers_model import load_causal_lm
from polyhead.models.loader import load_model
from polyhead.train.config import TrainConfig
from polyhead.train.trainer import Trainer
from tests.conftest import make_tiny_model
from tests.train.tiny_run import write_run_config


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill-teacher")
    make_tiny_model(folder, "llama", num_layers=2)
    return folder


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_transformers_model_of_a_pruned_folder_matches_polyhead(tmp_path, teacher_folder, allocation):
    result = prune_model(str(teacher_folder), PruneSpec("wanda", mlp=0.5, heads=0.5, allocation=allocation),
                         tmp_path / "student")
    ids = [3, 14, 15, 92, 65, 35]
    hf = load_causal_lm(result.folder)
    polyhead_model = load_model(str(result.folder), torch.float32).model
    with torch.no_grad():
        expected = polyhead_model.compute_logits(forward_sequence(polyhead_model, ids))
        torch.testing.assert_close(hf(torch.tensor([ids])).logits[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_distilling_a_pruned_student_writes_a_backbone_polyhead_loads(tmp_path, teacher_folder, allocation):
    torch.set_num_threads(1)
    result = prune_model(str(teacher_folder), PruneSpec("wanda", mlp=0.5, heads=0.5, allocation=allocation),
                         tmp_path / "student")
    path = write_run_config(tmp_path / "job", result.folder, ["reply"], mode="full", steps=3)
    raw = yaml.safe_load(path.read_text())
    raw["distill"] = {"teacher": str(teacher_folder), "temperature": 2.0, "alpha": 0.5}  # the full model teaches
    path.write_text(yaml.safe_dump(raw))
    Trainer(TrainConfig.from_yaml(path), show_progress=False).train()
    backbone = tmp_path / "job" / "run" / "backbone"
    block = json.loads((backbone / "config.json").read_text())["polyhead_pruning"]
    assert block["intermediate_sizes"] == result.intermediate_sizes
    trained = load_model(str(backbone), torch.float32)
    assert list(trained.config.intermediate_sizes) == result.intermediate_sizes
    assert list(trained.config.layer_num_heads) == result.num_heads
    before = load_model(str(result.folder), torch.float32).model.state_dict()
    after = trained.model.state_dict()
    assert not torch.equal(before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"])
    pack = (tmp_path / "job" / "run" / "packs" / "reply" / "task.yaml").read_text()
    assert str(backbone) in pack
