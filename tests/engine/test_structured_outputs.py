"""Structured outputs through the engine on a tiny random model: every kind constrains the output,
constrained rows share steps with free and classify rows without changing them, a compiled grammar
is reused, preemption and continuation never feed a token twice, bad grammars are refused."""

import json
import re

import jsonschema_rs
import pytest

from polyhead.engine.core.params import PoolingParams, SamplingParams, StructuredOutput
from polyhead.engine.core.request import PreparedRequest, Routing
from polyhead.engine.decoder.grammar_source import check_structured
from tests.conftest import make_engine
from tests.engine.pooling_reference import make_heads, register_heads
from tests.engine.test_pooling import finish

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "pick": {"enum": ["red", "green", "blue"]}},
          "required": ["n", "pick"], "additionalProperties": False}
CHOICES = ("alpha", "beta", "gamma")
REGEX = r"[0-9]{3}-[a-z]{2}"
LARK = 'start: "(" NUMBER ("," NUMBER)* ")"\nNUMBER: /[0-9]/'

KINDS = {
    "choice": (StructuredOutput("choice", choices=CHOICES), lambda text: text in CHOICES),
    "regex": (StructuredOutput("regex", REGEX), lambda text: re.fullmatch(REGEX, text) is not None),
    "json": (StructuredOutput("json", json.dumps(SCHEMA)),
             lambda text: jsonschema_rs.validator_for(SCHEMA).is_valid(json.loads(text))),
    "grammar": (StructuredOutput("grammar", LARK), lambda text: re.fullmatch(r"\([0-9](,[0-9])*\)", text)),
}


def run(engine, requests: dict[str, tuple[str, SamplingParams | PoolingParams]]) -> dict:
    for req_id, (prompt, params) in requests.items():
        engine.add_request(prompt, params, req_id=req_id)
    return finish(engine)


@pytest.fixture
def engine(tiny_llama):
    engine = make_engine(tiny_llama[0], block_size=4)
    register_heads(engine, make_heads())
    return engine


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_each_kind_constrains_the_output(engine, kind, temperature):
    structured, is_valid = KINDS[kind]
    params = SamplingParams(temperature=temperature, max_tokens=80, seed=5, structured=structured)
    outs = run(engine, {f"r{i}": (f"prompt {i}:", params) for i in range(4)})
    for out in outs.values():
        assert out.finish_reason == "stop", out.text
        assert is_valid(out.text), out.text


def test_an_unconstrained_random_model_does_not_follow_the_grammars(engine):
    """The tests above can fail: without the constraint the same requests match nothing."""
    outs = run(engine, {f"r{i}": (f"prompt {i}:", SamplingParams(temperature=0.0, max_tokens=12)) for i in range(4)})
    for kind, (_, is_valid) in KINDS.items():
        for out in outs.values():
            try:
                assert not is_valid(out.text), (kind, out.text)
            except json.JSONDecodeError:
                pass


def test_constrained_free_and_classify_rows_share_a_step_unchanged(engine):
    structured = KINDS["json"][0]
    requests = {"json": ("tell me", SamplingParams(temperature=0.0, max_tokens=40, structured=structured)),
                "choice": ("pick one", SamplingParams(temperature=0.0, max_tokens=40,
                                                      structured=KINDS["choice"][0])),
                "free": ("tell me", SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)),
                "sampled": ("more", SamplingParams(temperature=0.9, seed=3, max_tokens=20, ignore_eos=True)),
                "classify": ("a text to classify", PoolingParams("classify", task="sentiment"))}
    alone = {req_id: run(engine, {req_id: request})[req_id] for req_id, request in requests.items()}
    mixed_rows = []
    for req_id, (prompt, params) in requests.items():
        engine.add_request(prompt, params, req_id=req_id)
    together = {}
    while engine.has_unfinished_requests():
        outputs = engine.step()
        mixed_rows.append(dict(engine.last_step_stats.rows))
        together.update({o.req_id: o for o in outputs if o.finished})
    assert any(rows.get("generate", 0) >= 4 and rows.get("classify") for rows in mixed_rows)
    for req_id, out in alone.items():
        if req_id == "classify":
            assert together[req_id].pooled == pytest.approx(out.pooled, abs=1e-5)
        else:
            assert together[req_id].token_ids == out.token_ids, req_id
    assert KINDS["json"][1](together["json"].text) and together["choice"].text in CHOICES


def test_a_compiled_grammar_is_cached_and_each_request_gets_its_own_matcher(engine):
    grammars = engine.backend.grammars
    structured = StructuredOutput("json", json.dumps(SCHEMA))
    before = grammars.num_compiles
    params = SamplingParams(temperature=1.0, seed=1, max_tokens=60, structured=structured)
    outs = run(engine, {"a": ("x", params), "b": ("y", params), "c": ("z", params)})
    assert grammars.num_compiles == before + 1
    assert all(KINDS["json"][1](o.text) for o in outs.values())
    assert not grammars._matchers  # released when their requests finished


def test_a_complete_grammar_ends_the_request_with_stop_without_eos(engine):
    out = run(engine, {"c": ("q", SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True,
                                                 structured=StructuredOutput("choice", choices=("yes",))))})["c"]
    assert (out.text, out.finish_reason) == ("yes", "stop")
    assert len(out.token_ids) == 3  # y, e, s: no EOS token after them


def test_max_tokens_cuts_a_constrained_reply_with_length(engine):
    out = run(engine, {"r": ("q", SamplingParams(temperature=0.0, max_tokens=3, structured=KINDS["json"][0]))})["r"]
    assert out.finish_reason == "length" and out.text.startswith("{")


def test_preemption_does_not_feed_a_token_twice(tiny_llama):
    # 12 blocks of 4 tokens: the requests grow until the newest is preempted and recomputed
    engine = make_engine(tiny_llama[0], block_size=4, kv_cache_memory=12 * 2048, max_num_batched_tokens=8,
                         enable_prefix_caching=False)
    structured, is_valid = KINDS["grammar"]
    params = SamplingParams(temperature=0.0, max_tokens=14, structured=structured)
    alone = {f"g{i}": run(engine, {f"g{i}": (f"prompt number {i}", params)})[f"g{i}"] for i in range(3)}
    outs = run(engine, {f"g{i}": (f"prompt number {i}", params) for i in range(3)})
    assert engine.backend.scheduler.num_preemptions > 0
    for req_id, out in outs.items():
        assert out.token_ids == alone[req_id].token_ids
        assert out.finish_reason == "length" or is_valid(out.text)


def test_a_continued_request_resumes_its_grammar_after_its_earlier_output(engine):
    """After an engine restart a request's output so far ends its new prompt (supervision.py); its
    grammar must start after that output, not at the beginning."""
    params = SamplingParams(temperature=0.0, max_tokens=40, structured=KINDS["json"][0])
    whole = run(engine, {"w": ("tell me", params)})["w"]
    prompt = engine.tokenizer.encode("tell me", add_special_tokens=False)
    done = whole.token_ids[:5]
    prepared = engine.prepare(prompt + done, params, "cont")
    engine.admit(PreparedRequest("cont", None, prepared.token_ids, prepared.params, Routing(),
                                 num_continued_tokens=len(done)))
    out = finish(engine)["cont"]
    assert done + out.token_ids == whole.token_ids


@pytest.mark.parametrize("structured, construct", [
    (StructuredOutput("json", '{"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}'),
     "/$defs/missing"),
    (StructuredOutput("json", '{"type": "strng"}'), "strng"),
    (StructuredOutput("json", '{"type": "string", "format": "no-such-format"}'), "no-such-format"),
    (StructuredOutput("json", "{not json"), "not valid JSON"),
    (StructuredOutput("regex", "a(b"), "unclosed group"),
    (StructuredOutput("grammar", "start: missing_rule"), "missing_rule"),
    (StructuredOutput("choice", choices=("a\ud800",)), "lone surrogate"),
    # limits llguidance only meets once the grammar runs: the check walks its first bytes
    (StructuredOutput("grammar", 'start: "a"{1000000}'), "Too many items"),
    (StructuredOutput("regex", r"[^\s\S]"), "matches no text at all"),
])
def test_a_grammar_that_cannot_compile_is_refused_naming_the_construct(engine, structured, construct):
    with pytest.raises(ValueError, match=re.escape(construct)):
        engine.add_request("x", SamplingParams(structured=structured))
    assert not engine.has_unfinished_requests()


def test_a_choice_among_thousands_of_strings_and_special_characters(engine):
    choices = tuple(f"option {i}" for i in range(5000)) + ('say "hi" \\ café',)
    out = run(engine, {"c": ("q", SamplingParams(temperature=1.0, seed=2, max_tokens=30,
                                                 structured=StructuredOutput("choice", choices=choices)))})["c"]
    assert out.text in choices and out.finish_reason == "stop"
    special = run(engine, {"s": ("q", SamplingParams(temperature=0.0, max_tokens=30, structured=StructuredOutput(
        "choice", choices=('say "hi" \\ café',))))})["s"]
    assert special.text == 'say "hi" \\ café'  # quotes, a backslash and a non-ASCII letter, as given


def test_a_lenient_schema_ignores_what_strict_refuses():
    strict = StructuredOutput("json", '{"type": "string", "format": "no-such-format"}')
    with pytest.raises(ValueError, match="no-such-format"):
        check_structured(strict)
    check_structured(StructuredOutput("json", strict.value, strict=False))  # no error


def test_offline_llm_generate_follows_a_schema(tiny_llama):
    from polyhead.llm import LLM

    llm = LLM(str(tiny_llama[0]), dtype="float32", kv_cache_memory="16MiB")
    outs = llm.generate(["one", "two"], SamplingParams(temperature=0.0, max_tokens=60, structured=KINDS["json"][0]))
    assert all(KINDS["json"][1](o.text) for o in outs)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("with_logprobs", [False, True])
def test_the_sampler_applies_a_mask_to_its_row_only(temperature, with_logprobs):
    import torch

    from polyhead.engine.decoder.sampler import Sampler, SamplingRow

    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    allowed = torch.zeros(50, dtype=torch.bool)
    allowed[[5, 7]] = True
    params = SamplingParams(temperature=temperature, logprobs=0 if with_logprobs else None)
    rows = [SamplingRow(SamplingParams(temperature=0.0), [1], [], None),
            SamplingRow(params, [1], [], None, allowed),
            SamplingRow(SamplingParams(temperature=0.0), [1], [], None)]
    original = logits.clone()
    out = Sampler()(logits, rows)
    assert out.token_ids[0] == int(original[0].argmax()) and out.token_ids[2] == int(original[2].argmax())
    assert out.token_ids[1] in (5, 7)
    if temperature == 0.0:
        assert out.token_ids[1] == (5 if original[1, 5] > original[1, 7] else 7)
    assert torch.equal(logits, original)  # the caller's logits are never changed


def test_ignore_eos_keeps_a_constrained_row_going_until_its_grammar_ends(engine):
    endless = StructuredOutput("regex", "[a-z]*")  # accepting all along: EOS is always allowed
    out = run(engine, {"r": ("q", SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True,
                                                 structured=endless))})["r"]
    assert (len(out.token_ids), out.finish_reason) == (30, "length")
    assert engine.tokenizer.eos_token_id not in out.token_ids and re.fullmatch("[a-z]*", out.text)
