"""The rest of OpenAI's request surface against a live server (tiny random model, official client
where it sends the field): content parts, message names, lists of prompts, echo, logit_bias,
min_tokens, stop's limit, the fields polyhead refuses or ignores, /tokenize, /detokenize, /version,
and the model folder's generation_config.json as the defaults of unset sampling fields."""

import json

import httpx
import openai
import pytest

import polyhead
from tests.conftest import CHAT_TEMPLATE, make_tiny_model, tiny_tokenizer
from tests.server.conftest import MODEL, running_server
from tests.server.task_fixtures import bert, manifest_dir, running_task_server  # noqa: F401 - fixtures

GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}
FILE_DEFAULTS = {"temperature": 0.6, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.3}
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def surface_folder(tmp_path_factory):
    """A tiny model whose folder holds a generation_config.json with sampling fields and whose chat
    template renders a message's name."""
    folder = tmp_path_factory.mktemp("tiny-surface")
    make_tiny_model(folder, "llama", seed=3)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE.replace("{{ m['content'] }}",
                                                    "{% if m.name %}[{{ m.name }}] {% endif %}{{ m['content'] }}")
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, **FILE_DEFAULTS}))
    return folder


@pytest.fixture(scope="module")
def surface(surface_folder):
    with running_server(surface_folder) as (url, _):
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", timeout=30, max_retries=0)


@pytest.fixture
def any_client(any_server):
    """Both engine modes: what crosses to the engine process (logit_bias, min_tokens) must survive it."""
    return openai.OpenAI(base_url=f"{any_server}/v1", api_key="unused", timeout=30, max_retries=0)


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=30)


def assert_400(response: httpx.Response, param: str, says: str = "") -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert says in error["message"], error
    return error


def tokens(url: str, text: str) -> list[int]:
    return post(url, "/tokenize", {"prompt": text}).json()["tokens"]


# --- chat messages ---------------------------------------------------------------------------------
def test_content_parts_are_their_text_parts_joined_with_newlines(client):
    parts = [{"type": "text", "text": "Say"}, {"type": "text", "text": "hi"}]
    as_parts = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}],
                                              max_tokens=5, **GREEDY)
    as_text = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say\nhi"}],
                                             max_tokens=5, **GREEDY)
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content
    assert as_parts.usage.prompt_tokens == as_text.usage.prompt_tokens


@pytest.mark.parametrize(("content", "says"), [
    ([{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
     "part 1 has type image_url, but this model takes text only"),
    ([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}], "takes text only"),
    ([{"type": "video", "text": "x"}], "part 0 must be an object with a type of text"),
    ([{"type": "text"}], "needs a string text"),
    ([], "empty list of parts"),
])
def test_parts_that_are_not_text_are_a_400_naming_the_message(server, content, says):
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    assert_400(post(server, "/v1/chat/completions", body), "messages.0.content", says)


def test_only_an_assistant_message_may_come_without_content(server):
    assert_400(post(server, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]}),
               "messages.0", "a user message needs content")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None},
                {"role": "user", "content": "again"}]
    assert post(server, "/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 2}).status_code \
        == 200


def test_a_message_name_reaches_a_template_that_renders_it(surface):
    client = openai.OpenAI(base_url=f"{surface}/v1", api_key="unused", timeout=30, max_retries=0)
    plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                           **GREEDY)
    named = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi", "name": "ann"}],
                                           max_tokens=2, **GREEDY)
    assert named.usage.prompt_tokens - plain.usage.prompt_tokens == len("[ann] ")  # one byte token each


# --- completions: lists of prompts, echo ---------------------------------------------------------
def test_a_list_of_prompts_gets_n_choices_each_numbered_prompt_major(any_client, any_server):
    client, server = any_client, any_server
    batch = client.completions.create(model=MODEL, prompt=["ab", "xyz"], n=2, max_tokens=4, **GREEDY)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=4, **GREEDY).choices[0].text
             for p in ("ab", "xyz")]
    assert [c.text for c in batch.choices] == [alone[0], alone[0], alone[1], alone[1]]
    assert batch.usage.prompt_tokens == len(tokens(server, "ab")) + len(tokens(server, "xyz"))
    assert batch.usage.completion_tokens == 4 * 4
    as_ids = client.completions.create(model=MODEL, prompt=[tokens(server, "ab"), tokens(server, "xyz")], n=2,
                                       max_tokens=4, **GREEDY)
    assert [c.text for c in as_ids.choices] == [c.text for c in batch.choices]


def test_a_streamed_list_of_prompts_carries_the_same_choices(client):
    whole = client.completions.create(model=MODEL, prompt=["ab", "xyz"], n=2, max_tokens=4, **GREEDY)
    texts: dict[int, str] = {}
    for chunk in client.completions.create(model=MODEL, prompt=["ab", "xyz"], n=2, max_tokens=4, stream=True,
                                           **GREEDY):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {c.index: c.text for c in whole.choices}


@pytest.mark.parametrize("prompt", [[], [[]], ["ok", ""]])
def test_an_empty_prompt_in_a_list_is_a_400(server, prompt):
    assert_400(post(server, "/v1/completions", {"model": MODEL, "prompt": prompt}), "prompt")


def test_too_many_prompts_is_a_413(server):
    response = post(server, "/v1/completions", {"model": MODEL, "prompt": ["a"] * 65})
    assert response.status_code == 413 and response.json()["error"]["param"] == "prompt"


def test_echo_puts_the_prompt_before_each_choice_streamed_and_whole(client):
    plain = client.completions.create(model=MODEL, prompt="echo me", max_tokens=4, **GREEDY).choices[0].text
    whole = client.completions.create(model=MODEL, prompt="echo me", max_tokens=4, echo=True, **GREEDY)
    assert whole.choices[0].text == "echo me" + plain
    chunks = [c.choices[0].text for c in client.completions.create(model=MODEL, prompt="echo me", max_tokens=4,
                                                                   echo=True, stream=True, **GREEDY) if c.choices]
    assert chunks[0] == "echo me" and "".join(chunks) == whole.choices[0].text


def test_echo_of_bad_token_ids_is_a_400_not_a_500(client):
    """The fuzz suite found it: echo decoded a token prompt before the engine's checks ran."""
    for prompt in ([-5, 3], [10**12]):
        with pytest.raises(openai.BadRequestError, match=r"prompt token ids must be integers in \[0, "):
            client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, echo=True)


# --- sampling fields -------------------------------------------------------------------------------
def test_logit_bias_of_100_makes_greedy_pick_that_token(any_client, any_server):
    client, server = any_client, any_server
    z = tokens(server, "z")[0]
    out = client.completions.create(model=MODEL, prompt="abc", max_tokens=5, logit_bias={str(z): 100}, **GREEDY)
    assert out.choices[0].text == "zzzzz"


def test_min_tokens_holds_off_eos(any_client, any_server):
    client, server = any_client, any_server
    eos = tokens(server, "<|im_end|>")
    assert len(eos) == 1  # the tokenizer's EOS, a special token of its own
    bias = {str(eos[0]): 100}  # EOS first, unless min_tokens bans it
    early = client.completions.create(model=MODEL, prompt="abc", max_tokens=8, temperature=0, logit_bias=bias)
    held = client.completions.create(model=MODEL, prompt="abc", max_tokens=8, temperature=0, logit_bias=bias,
                                     extra_body={"min_tokens": 3})
    assert early.choices[0].text == "" and early.choices[0].finish_reason == "stop"
    assert held.choices[0].finish_reason == "stop" and held.choices[0].text
    assert held.usage.completion_tokens - early.usage.completion_tokens == 3  # 3 tokens, then the same EOS


@pytest.mark.parametrize(("field", "value", "param", "says"), [
    ("logit_bias", {"abc": 1}, "logit_bias.abc", "pattern"),
    ("logit_bias", {"5": 101}, "logit_bias.5", "less than or equal to 100"),
    ("logit_bias", {"99999": 1}, "logit_bias", "vocab_size"),
    ("stop", ["a", "b", "c", "d", "e"], "stop", "the limit is 4"),
    ("min_tokens", 9, "min_tokens", "max_tokens"), ("min_tokens", -1, "min_tokens", ""),
])
def test_bad_sampling_fields_are_a_400_naming_them(server, field, value, param, says):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 8, field: value}
    assert_400(post(server, "/v1/completions", body), param, says)


def test_max_completion_tokens_bounds_a_chat_reply(client):
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                         max_completion_tokens=3, **GREEDY)
    assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"


# --- fields polyhead does not implement ----------------------------------------------------------
@pytest.mark.parametrize(("path", "extra", "param"), [
    ("/v1/completions", {"suffix": "the end"}, "suffix"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"echo": True, "logprobs": 1}, "echo"),
    ("/v1/chat/completions", {"modalities": ["text", "audio"]}, "modalities"),
    ("/v1/chat/completions", {"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ("/v1/chat/completions", {"web_search_options": {}}, "web_search_options"),
])
def test_a_field_that_would_change_the_reply_is_refused_naming_it(server, path, extra, param):
    body = {"model": MODEL, "max_tokens": 2, **extra}
    body.update({"prompt": "x"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "x"}]})
    error = assert_400(post(server, path, body), param)
    assert error["code"] == "unsupported_parameter"


def test_top_logprobs_without_logprobs_is_a_400(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}
    assert_400(post(server, "/v1/chat/completions", body), "top_logprobs", "needs logprobs")


def test_hints_openai_documents_as_optional_are_ignored(client):
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                         store=False, metadata={"run": "1"}, service_tier="auto", user="u1",
                                         modalities=["text"], **GREEDY)
    assert out.usage.completion_tokens == 2
    out = client.completions.create(model=MODEL, prompt="hi", max_tokens=2, best_of=1, **GREEDY)
    assert len(out.choices) == 1


# --- /tokenize, /detokenize, /version ------------------------------------------------------------
def test_tokenize_counts_what_the_engine_sees(client, server):
    out = client.completions.create(model=MODEL, prompt="hello world", max_tokens=1, **GREEDY)
    tokenized = post(server, "/tokenize", {"model": MODEL, "prompt": "hello world", "return_token_strs": True}).json()
    assert tokenized["count"] == len(tokenized["tokens"]) == out.usage.prompt_tokens
    assert tokenized["max_model_len"] == 128 and len(tokenized["token_strs"]) == tokenized["count"]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1, **GREEDY)
    assert post(server, "/tokenize", {"messages": messages}).json()["count"] == chat.usage.prompt_tokens
    without_prompt = post(server, "/tokenize", {"messages": messages, "add_generation_prompt": False}).json()
    assert without_prompt["count"] < chat.usage.prompt_tokens


def test_detokenize_inverts_tokenize(server):
    text = "round trip, ünïcode ✓"
    assert post(server, "/detokenize", {"tokens": tokens(server, text)}).json() == {"prompt": text}


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/detokenize", {"tokens": [1, 10**9]}, "tokens"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, None),
    ("/tokenize", {}, None),
    ("/tokenize", {"model": "nope", "prompt": "x"}, "model"),
])
def test_tokenize_and_detokenize_refuse_bad_input_in_openai_shape(server, path, body, param):
    response = post(server, path, body)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == param


def test_tokenize_names_any_backbone_or_task(manifest_dir, tiny_llama, bert):  # noqa: F811
    from transformers import AutoTokenizer

    with running_task_server(manifest_dir[1], tiny_llama[0]) as (url, _):
        def tokenize(model: str) -> list[int]:
            return post(url, "/tokenize", {"model": model, "prompt": "hi"}).json()["tokens"]

        plain, templated, encoder = tokenize(MODEL), tokenize("shout"), tokenize("embed")
    assert templated == tokens_of("Say loudly: hi") and plain == tokens_of("hi")
    assert encoder == AutoTokenizer.from_pretrained(bert[0]).encode("hi")  # [CLS] ... [SEP], as the encoder sees it


def tokens_of(text: str) -> list[int]:
    return tiny_tokenizer().encode(text, add_special_tokens=False)


def test_version(server):
    assert httpx.get(f"{server}/version", timeout=30).json() == {"version": polyhead.__version__}


# --- generation_config.json ------------------------------------------------------------------------
def test_the_models_generation_config_fills_unset_sampling_fields(surface):
    card = httpx.get(f"{surface}/v1/models", timeout=30).json()["data"][0]
    assert card["sampling_defaults"] == {**OPENAI_DEFAULTS, **FILE_DEFAULTS}

    def sample(**fields):
        body = {"model": MODEL, "prompt": "abc", "max_tokens": 12, "seed": 11, "ignore_eos": True, **fields}
        return post(surface, "/v1/completions", body).json()["choices"][0]["text"]

    assert sample() == sample(**FILE_DEFAULTS)
    assert sample() != sample(**OPENAI_DEFAULTS)
    assert sample(temperature=0) == sample(temperature=0, top_p=1.0)  # a request's own field wins


def test_generation_config_none_keeps_openais_defaults(surface_folder):
    with running_server(surface_folder, generation_config="none") as (url, _):
        card = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]
    assert card["sampling_defaults"] == OPENAI_DEFAULTS


def test_a_model_without_sampling_fields_serves_openais_defaults(server):
    assert httpx.get(f"{server}/v1/models", timeout=30).json()["data"][0]["sampling_defaults"] == OPENAI_DEFAULTS
