"""Stop strings matched on the detokenized text, and what streaming holds back for them."""

import pytest

from polyhead.engine.core.detokenizer import IncrementalDetokenizer
from polyhead.engine.core.params import SamplingParams
from tests.engine.conftest import REPLACEMENT, byte_token_ids, decode, encode, stream


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
