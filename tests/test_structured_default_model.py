"""Structured outputs on the real default model, float32 and bfloat16: every kind constrains its
reply (json.loads succeeds, the schema validates) while free and classify rows share the steps,
and over HTTP the streamed reply equals the whole one."""

import json
import re

import jsonschema_rs
import openai
import pytest
import torch

from polyhead.config import EngineConfig
from polyhead.cpu import cpu_features
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.engine.core.engine import Engine
from polyhead.engine.core.params import PoolingParams, SamplingParams, StructuredOutput
from polyhead.engine.decoder.backend import DecoderBackend
from polyhead.models.heads import ClassifyHead
from polyhead.models.loader import load_model
from polyhead.models.registry import DEFAULT_MODEL
from polyhead.server.app import ServerSettings, build_app
from tests.conftest import serve_in_thread

pytestmark = pytest.mark.model

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city"],
          "properties": {"name": {"type": "string", "maxLength": 40},
                         "age": {"type": "integer", "minimum": 0, "maximum": 150},
                         "city": {"type": "string", "maxLength": 40}}}
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
LIST_GRAMMAR = 'start: item ("," " " item)*\nitem: /[a-z]{1,12}/'
STORY = "Alice is 30 years old and lives in Paris."

# kind -> (the user's message, the constraint, does the reply satisfy it)
CASES = {
    "json": (f"Extract the person as JSON: {STORY}", StructuredOutput("json", json.dumps(PERSON)),
             lambda text: jsonschema_rs.validator_for(PERSON).is_valid(json.loads(text))),
    "json_object": (f"Reply with a JSON object with keys name and age. {STORY}", StructuredOutput("json_object"),
                    lambda text: isinstance(json.loads(text), dict)),
    "regex": ("What is the date of the first moon landing? Answer as YYYY-MM-DD.", StructuredOutput("regex", DATE),
              lambda text: re.fullmatch(DATE, text) is not None),
    "choice": ("Is the sky blue? Answer yes or no.", StructuredOutput("choice", choices=("yes", "no")),
               lambda text: text in ("yes", "no")),
    "grammar": ("List three fruits, lowercase, separated by commas.", StructuredOutput("grammar", LIST_GRAMMAR),
                lambda text: re.fullmatch(r"[a-z]{1,12}(, [a-z]{1,12})*", text) is not None),
}
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not cpu_features().native_bf16, reason="needs native bf16 (AVX512-BF16): bfloat16 is refused on this CPU"))]


@pytest.fixture(scope="module", params=DTYPES, ids=["float32", "bfloat16"])
def engine(request, default_model):
    dtype = request.param
    loaded = default_model if dtype == torch.float32 else load_model(None, dtype)
    engine = Engine(DecoderBackend(EngineConfig(dtype=str(dtype).removeprefix("torch."), kv_cache_memory="128MiB"),
                                   loaded=loaded))
    torch.manual_seed(0)
    engine.register_head("intent", ClassifyHead(engine.info.hidden_size, 3))
    return engine


def chat_prompt(engine, content: str) -> list[int]:
    ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_every_kind_constrains_the_reply_beside_free_and_classify_rows(engine):
    for kind, (content, structured, _) in CASES.items():
        engine.add_request(chat_prompt(engine, content), SamplingParams(temperature=0.0, max_tokens=120,
                                                                        structured=structured), req_id=kind)
    engine.add_request(chat_prompt(engine, "Write a sentence about the sea."),
                       SamplingParams(temperature=0.7, seed=1, max_tokens=30, ignore_eos=True), req_id="free")
    outputs, steps = {}, []
    running = engine.backend.scheduler.requests
    while not all(kind not in running or running[kind].num_output_tokens for kind in CASES):  # compile, decode
        outputs.update({o.req_id: o for o in engine.step() if o.finished})
    for i in range(3):  # classify rows join the constrained and free decode rows
        engine.add_request(f"Some text to classify, number {i}.", PoolingParams("classify", task="intent"),
                           req_id=f"classify{i}")
    while engine.has_unfinished_requests():
        outputs.update({o.req_id: o for o in engine.step() if o.finished})
        steps.append(dict(engine.last_step_stats.rows))
    # constrained rows (those not done yet) and the free row decode in the step the classify rows run in
    assert any(rows.get("generate", 0) >= 4 and rows.get("classify") == 3 for rows in steps), steps
    for kind, (_, _, is_valid) in CASES.items():
        out = outputs[kind]
        assert out.finish_reason == "stop" and is_valid(out.text), (kind, out.text)
    assert outputs["free"].text and all(len(outputs[f"classify{i}"].pooled) == 3 for i in range(3))


def test_streamed_and_whole_replies_follow_the_schema_over_http(engine):
    app = build_app(AsyncEngine(engine), ServerSettings(model_names=[DEFAULT_MODEL], default_max_tokens=120))
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    messages = [{"role": "user", "content": CASES["json"][0]}]
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=0)
        whole = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, temperature=0,
                                               response_format=response_format)
        stream = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, temperature=0,
                                                response_format=response_format, stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        choice = client.completions.create(model=DEFAULT_MODEL, prompt="The capital of France is", temperature=0,
                                           extra_body={"structured_outputs": {"choice": [" Paris", " Rome"]}})
    text = whole.choices[0].message.content
    assert streamed == text and CASES["json"][2](text), text
    assert json.loads(text)["name"] == "Alice" and json.loads(text)["age"] == 30
    assert choice.choices[0].text == " Paris"
