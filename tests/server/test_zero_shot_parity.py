"""One zero-shot plan offline and served: the same TaskSpec and text give the same label
probabilities from `LLM.classify` and from `/v1/classify` on a live server, with the engine on a
thread and in a child process (tiny random Llama, float32, within 1e-5)."""

import httpx
import pytest
import torch
import yaml

from polyhead.llm import LLM
from polyhead.tasks import zero_shot
from polyhead.tasks.manifest import load_manifest
from tests.conftest import make_engine
from tests.server.task_fixtures import SHARED, running_task_server

TASKS = [  # one row per label (multi-token answers), one row for all labels, the default instruction
    {"name": "yesno", "kind": "classify", "labels": ["yes", "no"], "verbalizers": {"yes": " yes", "no": " no way"},
     "prompt_template": SHARED + "{input} Answer:"},
    {"name": "abc", "kind": "classify", "labels": ["a", "b", "c"], "prompt_template": "{input} Pick one: "},
    {"name": "bare", "kind": "classify", "labels": ["neg", "pos"]},
]
TEXTS = ["is it good?", "it broke on day two and nobody answered"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    path = tmp_path_factory.mktemp("zero-shot") / "tasks.yaml"
    path.write_text(yaml.safe_dump({"tasks": TASKS}))
    return path


@pytest.fixture(scope="module")
def offline(manifest, tiny_llama):
    llm = LLM.from_engine(make_engine(tiny_llama[0]))
    for spec in load_manifest(manifest):
        llm.register_task(spec)
    return llm


def test_the_plans_cover_both_row_shapes(offline):
    plans = {spec.name: zero_shot.build_plan(spec, offline.tokenizer, TEXTS[0]) for spec in offline.tasks.values()}
    assert plans["abc"].is_one_row and not plans["yesno"].is_one_row and not plans["bare"].is_one_row


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_served_probabilities_equal_offline(manifest, tiny_llama, offline, mode):
    names = [task["name"] for task in TASKS]
    expected = offline.classify(TEXTS, names)  # per text: task -> label -> probability
    with running_task_server(manifest, tiny_llama[0], mode) as (url, _):
        fan = httpx.post(f"{url}/v1/classify", json={"tasks": names, "input": TEXTS}, timeout=60).json()
        alone = {name: httpx.post(f"{url}/v1/classify", json={"task": name, "input": TEXTS}, timeout=60).json()
                 for name in names}
    assert [(d["index"], d["task"]) for d in fan["data"]] == [(i, n) for i in range(len(TEXTS)) for n in names]
    for item in fan["data"] + [d for out in alone.values() for d in out["data"]]:
        want = expected[item["index"]][item["task"]]
        assert item["labels"] == list(want)
        torch.testing.assert_close(torch.tensor(item["probs"], dtype=torch.float64),
                                   torch.tensor(list(want.values()), dtype=torch.float64), atol=1e-5, rtol=0)
    for name, out in alone.items():  # the server ran exactly the plan's rows
        spec = offline.tasks[name]
        plans = [zero_shot.build_plan(spec, offline.tokenizer, text) for text in TEXTS]
        assert out["usage"]["prompt_tokens"] == sum(len(ids) for plan in plans for ids, _ in plan.requests())
