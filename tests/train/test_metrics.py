"""Metrics on hand-made cases whose answers are worked out by hand."""

import math

import pytest
import torch

from polyhead.train.metrics import (
    accuracy,
    bio_spans,
    is_better,
    macro_f1,
    perplexity,
    retrieval_accuracy,
    span_prf,
)


def test_accuracy_and_macro_f1():
    gold = [0, 0, 1, 1, 2]
    pred = [0, 1, 1, 1, 0]
    assert accuracy(pred, gold) == pytest.approx(3 / 5)
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp0 -> 0
    assert macro_f1(pred, gold, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1(gold, gold, 3) == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        accuracy([], [])


def test_bio_spans_follow_seqeval():
    assert bio_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert bio_spans(["I-PER", "I-PER", "O"]) == {("PER", 0, 2)}  # I- after O starts a span
    assert bio_spans(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 3)}  # type change
    assert bio_spans(["B-PER", "B-PER"]) == {("PER", 0, 1), ("PER", 1, 2)}
    assert bio_spans(["O", "O"]) == set()


def test_span_f1_counts_exact_matches_only():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]]  # PER span cut short: wrong
    got = span_prf(pred, gold)
    assert got["span_precision"] == pytest.approx(2 / 3)
    assert got["span_recall"] == pytest.approx(2 / 3)
    assert got["span_f1"] == pytest.approx(2 / 3)
    assert span_prf(gold, gold)["span_f1"] == 1.0
    assert span_prf([["O", "O"]], [["B-PER", "O"]])["span_f1"] == 0.0


def test_perplexity_and_retrieval():
    got = perplexity(total_nll=6.0, num_tokens=3)
    assert got["loss"] == 2.0 and got["perplexity"] == pytest.approx(math.exp(2.0))
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    documents = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # query 2 is nearest document 0
    assert retrieval_accuracy(queries, documents) == pytest.approx(2 / 3)


def test_is_better_knows_the_direction():
    assert is_better("perplexity", 3.0, 4.0) and not is_better("reply/loss", 5.0, 4.0)
    assert is_better("macro_f1", 0.9, 0.8) and is_better("accuracy", 0.1, None)
