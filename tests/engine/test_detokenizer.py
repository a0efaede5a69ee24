"""Streaming text equals a full decode: no broken characters, no repeated or lost text."""

import random

import pytest

from polyhead.engine.core.params import SamplingParams
from tests.engine.conftest import (
    MULTILINGUAL,
    REPLACEMENT,
    byte_token_ids,
    decode,
    encode,
    stream,
    wrap_tokenizer,
)

# --- streaming equals decode -------------------------------------------------------------------------


def test_byte_level_multibyte_characters_are_held_until_complete(smollm2):
    output = encode(smollm2, MULTILINGUAL)
    assert any(REPLACEMENT in decode(smollm2, [t]) for t in output)  # some characters do span tokens
    _, deltas, _ = stream(smollm2, encode(smollm2, "Say:"), output)
    assert "".join(deltas) == decode(smollm2, output) == MULTILINGUAL
    assert not any(REPLACEMENT in d for d in deltas)
    assert "" in deltas  # at least one step had only half a character and sent nothing


@pytest.mark.parametrize("text", ["😀", "👍🏽", "中文", "é", "﷽", "🇫🇷x", "a😀b中c"])
def test_one_token_per_byte_still_streams_whole_characters(smollm2, text):
    output = byte_token_ids(smollm2, text.encode())
    _, deltas, _ = stream(smollm2, encode(smollm2, "Hi"), output)
    # Each character goes out whole with the byte that completes it, and nothing goes out before.
    assert [d for d in deltas if d] == list(text)
    assert deltas.count("") == len(text.encode()) - len(text)


def test_random_byte_level_sequences_match_decode(smollm2):
    """Random ids, many of them pieces of characters. Exactness is promised while a character ends
    within 16 tokens; the fragment-only outputs stay shorter than that (longer garbage: see below)."""
    rng = random.Random(0)
    fragments = [t for t in range(len(smollm2)) if REPLACEMENT in decode(smollm2, [t])]
    specials = smollm2.all_special_ids
    assert len(fragments) > 100 and specials
    for _ in range(500):
        pool, max_len = rng.choice([(range(len(smollm2)), 60), (fragments, 15), (fragments + specials, 15)])
        prompt = [rng.choice(pool) for _ in range(rng.randint(0, 8))]
        output = [rng.choice(pool) for _ in range(rng.randint(1, max_len))]
        skip = rng.random() < 0.5
        _, deltas, _ = stream(smollm2, prompt, output, SamplingParams(skip_special_tokens=skip),
                              chunk=rng.choice([1, 1, 2, 3]))
        assert "".join(deltas) == decode(smollm2, output, skip), (prompt, output, skip)


def test_adversarial_splits_of_real_text_match_decode(smollm2):
    """Real multilingual text, with random characters broken into one token per byte."""
    rng = random.Random(1)
    words = MULTILINGUAL.split() + ["🧑‍🚀", "ありがとう", "Привет", "🤖🤖", "\n", "  "]
    for _ in range(200):
        output = []
        for word in rng.choices(words, k=rng.randint(1, 8)):
            piece = word + rng.choice(["", " "])
            is_split = rng.random() < 0.5
            output += byte_token_ids(smollm2, piece.encode()) if is_split else encode(smollm2, piece)
        prompt = encode(smollm2, rng.choice(words))
        _, deltas, _ = stream(smollm2, prompt, output)
        assert "".join(deltas) == decode(smollm2, output)
        assert not any(REPLACEMENT in d for d in deltas)


def test_prompt_cut_inside_a_character_is_not_used_as_context(smollm2):
    emoji = byte_token_ids(smollm2, "😀".encode())
    output = emoji[2:] + encode(smollm2, " ok")
    _, deltas, _ = stream(smollm2, encode(smollm2, "Hi") + emoji[:2], output)
    assert "".join(deltas) == decode(smollm2, output)
    assert "".join(deltas).endswith(" ok")


def test_metaspace_first_output_word_gets_its_space_from_the_prompt(metaspace):
    output = encode(metaspace, "world the")
    assert metaspace.convert_ids_to_tokens(output) == ["▁world", "▁the"]
    _, deltas, _ = stream(metaspace, encode(metaspace, "Hello"), output)
    assert deltas == [" world", " the"]
    _, deltas, _ = stream(metaspace, [], output)  # no prompt: a text's first word has no space
    assert "".join(deltas) == decode(metaspace, output) == "world the"


@pytest.mark.parametrize("name", ["metaspace", "llama_style"])
def test_random_sentencepiece_sequences_match_decode_in_context(request, name):
    tok = request.getfixturevalue(name)
    rng = random.Random(2)
    text_pool = ["Hello", "world", "the", "a", "running", "lo", ",", "!", "é", "Hel lo", "wor ld"]
    if name == "llama_style":
        text_pool += ["😀", "中文", "ü", "👍🏽"]  # not in the vocab: <0xNN> pieces
    for _ in range(300):
        output = []
        for _ in range(rng.randint(1, 10)):
            output += encode(tok, rng.choice(text_pool))
            if rng.random() < 0.2:
                output.append(rng.choice(tok.all_special_ids))
        prompt = encode(tok, " ".join(rng.choices(text_pool, k=rng.randint(0, 4))))
        skip = rng.random() < 0.5
        _, deltas, _ = stream(tok, prompt, output, SamplingParams(skip_special_tokens=skip))
        before = decode(tok, prompt, skip)
        assert "".join(deltas) == decode(tok, prompt + output, skip)[len(before):], (prompt, output)
        assert not any(REPLACEMENT in d for d in deltas)


def test_llama_byte_fallback_emoji_streams_whole(llama_style):
    output = encode(llama_style, "café 😀 the")
    assert "<0xF0>" in llama_style.convert_ids_to_tokens(output)
    _, deltas, _ = stream(llama_style, encode(llama_style, "Hello"), output)
    assert "".join(deltas) == " café 😀 the"
    assert " 😀" in deltas or "😀" in deltas


def test_no_clean_up_of_spaces_even_when_the_tokenizer_asks_for_it(metaspace):
    """Clean-up joins " ," by what comes next, which would change text already streamed."""
    tok = wrap_tokenizer(metaspace.backend_tokenizer)
    tok.clean_up_tokenization_spaces = True
    output = encode(tok, "Hello ,")
    assert tok.convert_ids_to_tokens(output) == ["▁Hello", "▁,"] and tok.decode(output) == "Hello,"
    _, deltas, _ = stream(tok, [], output)
    assert "".join(deltas) == decode(tok, output) == "Hello ,"


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens_skipped_or_kept(smollm2, skip):
    output = encode(smollm2, "Hi") + [smollm2.eos_token_id] + encode(smollm2, " there")
    _, deltas, _ = stream(smollm2, [], output, SamplingParams(skip_special_tokens=skip))
    assert "".join(deltas) == ("Hi there" if skip else f"Hi{smollm2.eos_token} there")


# --- cost stays bounded ------------------------------------------------------------------------------


class CountingTokenizer:
    """Records how many ids each decode call gets."""

    def __init__(self, tok):
        self.tok, self.sizes = tok, []

    def decode(self, ids, **kwargs):
        self.sizes.append(len(ids))
        return self.tok.decode(ids, **kwargs)


def test_decode_window_stays_small_on_long_outputs(smollm2):
    counting = CountingTokenizer(smollm2)
    output = encode(smollm2, (MULTILINGUAL + " ") * 40)
    assert len(output) > 800
    _, deltas, _ = stream(counting, encode(smollm2, "Long prompt " * 50), output)
    assert "".join(deltas) == decode(smollm2, output)
    assert max(counting.sizes) <= 10  # the context and a character's few tokens, whatever the length


def test_many_skipped_special_tokens_do_not_grow_the_window(metaspace):
    counting = CountingTokenizer(metaspace)
    eos = metaspace.eos_token_id
    output = (encode(metaspace, "Hello") + [eos] * 12) * 20 + [eos] * 500 + encode(metaspace, "world")
    _, deltas, _ = stream(counting, [], output)
    assert "".join(deltas) == decode(metaspace, output) == "Hello" + " Hello" * 19 + " world"
    assert max(counting.sizes) <= 21  # 5 tokens of context + 16 waiting


def test_invalid_bytes_forever_still_bounded_and_consistent(smollm2):
    """A stream that never completes a character: text goes out (as U+FFFD) instead of piling up."""
    counting = CountingTokenizer(smollm2)
    output = byte_token_ids(smollm2, b"\xf0\x9f" * 200)
    det, deltas, _ = stream(counting, [], output)
    assert max(counting.sizes) <= 21
    assert sum(len(d) > 0 for d in deltas[:-1]) > 5  # it went out while streaming, not only at the end
    assert set(det.text) == {REPLACEMENT}


# --- stop strings ------------------------------------------------------------------------------------
