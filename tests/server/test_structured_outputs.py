"""response_format and structured_outputs over HTTP with the official openai client, in both engine
modes: whole and streamed, n > 1, stop strings, a generate task's own response_format (also with a
LoRA adapter), and a 400 naming the field for a schema that cannot compile."""

import json
import re

import jsonschema_rs
import openai
import pytest
import yaml

from tests.server.conftest import MODEL
from tests.server.task_fixtures import running_task_server

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "pick": {"enum": ["red", "green", "blue"]}},
          "required": ["n", "pick"], "additionalProperties": False}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "pick", "schema": SCHEMA, "strict": True}}
is_valid = jsonschema_rs.validator_for(SCHEMA).is_valid


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, tiny_llama):
    from tests.lora.conftest import make_adapter

    folder = tmp_path_factory.mktemp("structured-manifest")
    make_adapter(tiny_llama[0], folder / "adapter", seed=5, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    extract = {"kind": "generate", "prompt_template": "Extract: {input}", "response_format": JSON_SCHEMA_FORMAT,
               "sampling": {"max_tokens": 60, "temperature": 0.0}}
    tasks = [{"name": "extract", **extract}, {"name": "extract-lora", "adapter": "adapter", **extract}]
    path = folder / "tasks.yaml"
    path.write_text(yaml.safe_dump({"tasks": tasks}))
    return path


@pytest.fixture(scope="module")
def thread_url(manifest, tiny_llama):
    with running_task_server(manifest, tiny_llama[0], default_max_tokens=60) as (url, _):
        yield url


@pytest.fixture(scope="module")
def process_url(manifest, tiny_llama):
    with running_task_server(manifest, tiny_llama[0], "process", default_max_tokens=60) as (url, _):
        yield url


@pytest.fixture(params=["thread", "process"])
def client(request):
    url = request.getfixturevalue(f"{request.param}_url")
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)


def test_chat_json_schema_whole_and_streamed(client):
    messages = [{"role": "user", "content": "pick a colour"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                           response_format=JSON_SCHEMA_FORMAT)
    text = whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "stop" and is_valid(json.loads(text)), text
    chunks = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, stream=True,
                                            response_format=JSON_SCHEMA_FORMAT)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def test_completions_extras_regex_and_choice_with_n(client):
    out = client.completions.create(model=MODEL, prompt="code:", temperature=1.0, seed=3, n=3,
                                    extra_body={"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}})
    assert len(out.choices) == 3
    assert all(re.fullmatch("[0-9]{3}-[a-z]{2}", c.text) and c.finish_reason == "stop" for c in out.choices)
    choice = client.completions.create(model=MODEL, prompt="answer:", temperature=0, stream=True,
                                       extra_body={"structured_outputs": {"choice": ["left", "right"]}})
    assert "".join(c.choices[0].text for c in choice if c.choices) in ("left", "right")


def test_json_object_and_a_lark_grammar_on_chat(client):
    messages = [{"role": "user", "content": "numbers"}]
    grammar = 'start: "[" NUMBER ("," NUMBER)* "]"\nNUMBER: /[0-9]/'
    out = client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                         extra_body={"structured_outputs": {"grammar": grammar}})
    assert re.fullmatch(r"\[[0-9](,[0-9])*\]", out.choices[0].message.content)
    obj = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=6,
                                         response_format={"type": "json_object"})
    assert obj.choices[0].message.content.startswith("{")  # a random model: cut by max_tokens, but an object


def test_a_stop_string_still_ends_a_constrained_reply(client):
    kwargs = {"model": MODEL, "prompt": "code:", "temperature": 0,
              "extra_body": {"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}}}
    full = client.completions.create(**kwargs).choices[0].text
    out = client.completions.create(**kwargs, stop=["-"]).choices[0]
    assert (out.text, out.finish_reason) == (full.split("-")[0], "stop")


@pytest.mark.parametrize("task", ["extract", "extract-lora"])
def test_a_generate_task_answers_in_its_own_schema(client, task):
    out = client.chat.completions.create(model=task, messages=[{"role": "user", "content": "the sky"}])
    assert is_valid(json.loads(out.choices[0].message.content))
    free = client.chat.completions.create(model=task, messages=[{"role": "user", "content": "the sky"}],
                                          max_tokens=6, response_format={"type": "text"},
                                          extra_body={"ignore_eos": True})
    assert free.choices[0].finish_reason == "length"  # the request's own format replaces the task's


@pytest.mark.parametrize("body, param, message", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}}},
     "response_format", "strng"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema"),
    ({"structured_outputs": {"regex": "a(b"}}, "structured_outputs", "unclosed group"),
    ({"structured_outputs": {"json": {"$ref": "#/nowhere"}}}, "structured_outputs", "nowhere"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs.structural_tag", "Extra inputs"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs", "choice"),
    ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, "structured_outputs",
     "cannot both"),
    ({"response_format": {"type": "yaml"}}, "response_format.type", "json_schema"),
])
def test_bad_structure_is_a_400_naming_the_field(client, body, param, message):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="x", extra_body=body)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == param and message in error["message"], error


def test_a_grammar_that_fails_while_generating_is_a_400_whole_and_streamed(client):
    """Some of llguidance's limits show only bytes into a reply, past what the check walks."""
    grammar = 'start: /[a-z]{8}/ x\nx: "a"{1000000}'
    kwargs = {"model": MODEL, "prompt": "x", "temperature": 0,
              "extra_body": {"structured_outputs": {"grammar": grammar}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**kwargs)
    error = caught.value.body
    assert error["param"] == "structured_outputs" and "failed while generating" in error["message"]
    with pytest.raises(openai.APIError) as streamed:
        list(client.completions.create(**kwargs, stream=True))
    assert "failed while generating" in str(streamed.value)
