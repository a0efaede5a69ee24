"""The embedding benchmarks' inputs are reproducible, and every attention variant they time
computes the same thing."""

import torch

from polyhead.bench.embed import make_sentences
from polyhead.bench.encoder_attention import HEAD_DIM, NUM_HEADS, variants


def test_sentences_are_seeded_and_about_the_asked_length():
    a, b = make_sentences(50, 12, seed=3), make_sentences(50, 12, seed=3)
    assert a == b and a != make_sentences(50, 12, seed=4)
    assert all(9 <= len(s.split()) <= 15 for s in a)


def test_attention_variants_agree():
    lens = [7, 7, 5, 3, 3, 3, 1]
    qkv = torch.randn(sum(lens), 3 * NUM_HEADS * HEAD_DIM, generator=torch.Generator().manual_seed(0))
    runs = variants(qkv, lens)
    reference = runs["one SDPA call per sequence"]()
    for name, run in runs.items():
        torch.testing.assert_close(run(), reference, atol=1e-5, rtol=1e-5, msg=name)
