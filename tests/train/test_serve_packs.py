"""Train -> export -> load the packs into polyhead's engine (heads + PEFT adapters per task) ->
the engine's predictions equal the trainer's evaluation on the validation split."""

import pytest
import torch
from safetensors.torch import load_file

from polyhead.engine.core.params import PoolingParams
from polyhead.models.heads import EmbedPooler, load_head
from polyhead.tasks.manifest import load_manifest
from polyhead.train.config import TrainConfig
from polyhead.train.trainer import Trainer
from tests.conftest import make_engine
from tests.train.tiny_run import write_run_config


def _serve_packs(engine, specs, hidden_size: int) -> None:
    """What a server does with a manifest: register each pack's head and adapter under its name."""
    for spec in specs:
        if spec.kind in ("classify", "tag"):
            head = load_head(spec.head, spec.kind, len(spec.labels), hidden_size, spec.pooling)
        else:
            head = EmbedPooler(spec.pooling, spec.normalize, load_file(spec.head)["weight"])
        engine.register_head(spec.name, head)
        if spec.adapter is not None:
            engine.register_adapter(spec.name, spec.adapter)


def _pooled(engine, task: str, kind: str, prompts: list[list[int]]) -> list:
    adapter = task if task in engine.backend.lora.names else None
    req_ids = [engine.add_request(p, PoolingParams(kind=kind, task=task), task=task, adapter=adapter)
               for p in prompts]
    done = {}
    while len(done) < len(req_ids):
        for out in engine.step():
            if out.finished:
                done[out.req_id] = out.pooled
    return [done[r] for r in req_ids]


@pytest.mark.parametrize("mode", ["lora", "heads"])
def test_engine_serves_the_exported_packs_with_the_trainers_predictions(tiny_folder, tmp_path, mode):
    path = write_run_config(tmp_path, tiny_folder, ["sentiment", "ner", "pairs"], mode=mode, steps=4,
                            eval_every=0, sampling={"strategy": "round_robin"})
    trainer = Trainer(TrainConfig.from_yaml(path), show_progress=False)
    trainer.train()
    expected = trainer.evaluate("validation")  # the exported (best) weights are the ones in memory
    specs = load_manifest(tmp_path / "run" / "tasks.yaml")
    assert all((s.adapter is not None) == (mode == "lora") for s in specs)
    engine = make_engine(tiny_folder)
    _serve_packs(engine, specs, hidden_size=64)
    data = trainer.streams.split("validation")

    prompts = [ex.input_ids for ex in data["sentiment"]]
    probs = torch.tensor(_pooled(engine, "sentiment", "classify", prompts))  # [N, 2]
    torch.testing.assert_close(probs, expected["sentiment"].probabilities, atol=1e-4, rtol=1e-4)
    assert probs.argmax(-1).tolist() == expected["sentiment"].predictions

    labels = trainer.model.tasks["ner"].labels
    served_tags = []
    for ex, token_probs in zip(data["ner"], _pooled(engine, "ner", "tag", [ex.input_ids for ex in data["ner"]])):
        first_subwords = [i for i, label in enumerate(ex.labels) if label != -100]
        served_tags.append([labels[int(torch.tensor(token_probs[i]).argmax())] for i in first_subwords])
    assert served_tags == expected["ner"].predictions

    examples = list(data["pairs"])[:4]
    served = torch.tensor(_pooled(engine, "pairs", "embed", [ex.input_ids for ex in examples]))  # [4, D]
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(ex.input_ids) for ex in examples], batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(ex.input_ids), dtype=torch.long) for ex in examples],
                                           batch_first=True)
    with torch.no_grad():
        out = trainer.model.forward_task("pairs", ids, mask, positive_ids=ids, positive_mask=mask)
    torch.testing.assert_close(served, out.embeddings[:4], atol=1e-4, rtol=1e-4)


def test_the_task_server_answers_with_the_trainers_predictions(tiny_folder, tmp_path):
    """`polyhead serve --tasks <run>/tasks.yaml`'s /v1/classify on the validation texts."""
    import json

    import httpx

    from tests.server.task_fixtures import running_task_server

    path = write_run_config(tmp_path, tiny_folder, ["sentiment"], mode="lora", steps=4, eval_every=0)
    config = TrainConfig.from_yaml(path)
    trainer = Trainer(config, show_progress=False)
    trainer.train()
    expected = trainer.evaluate("validation")["sentiment"]
    with open(config.tasks[0].data.validation) as f:
        texts = [json.loads(line)["text"] for line in f]
    with running_task_server(tmp_path / "run" / "tasks.yaml", tiny_folder) as (url, _):
        reply = httpx.post(f"{url}/v1/classify", json={"task": "sentiment", "input": texts}, timeout=60)
    assert reply.status_code == 200, reply.text
    data = reply.json()["data"]
    torch.testing.assert_close(torch.tensor([d["probs"] for d in data]), expected.probabilities,
                               atol=1e-4, rtol=1e-4)
    assert [d["label"] for d in data] == [["neg", "pos"][i] for i in expected.predictions]
