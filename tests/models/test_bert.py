"""Our BERT-family encoder against transformers' on tiny random models: every token's final state
for several sequences of different lengths in one flat ragged batch; the sentence-transformers
pipeline read from the folder."""

import json

import pytest
import torch
import torch.nn.functional as F

from polyhead.models.bert import attention_buckets
from polyhead.models.encoder_loader import load_encoder
from tests.conftest import TINY_ENCODERS, make_tiny_encoder

# lengths in batch order -> buckets [9, 9, 9, 5] (short: padded), [90, 70] (padded), [66, 66]
# (no padding), [17, 14, 1, 5, 5]: any order is correct, longest first packs buckets better
LENGTHS = [9, 9, 9, 5, 90, 70, 66, 66, 17, 14, 1, 5, 5]


@pytest.mark.parametrize(("arch", "with_token_types"), [(arch, False) for arch in TINY_ENCODERS] + [("bert", True)])
def test_token_states_match_transformers_on_a_ragged_batch(tmp_path, arch, with_token_types):
    hf = make_tiny_encoder(tmp_path, arch, max_position_embeddings=96)
    ours = load_encoder(str(tmp_path), torch.float32)
    assert ours.config.position_offset == (0 if arch == "bert" else 2)
    torch.manual_seed(1)
    seqs = [torch.randint(5, ours.config.vocab_size, (n,)) for n in LENGTHS]  # no pad ids (RoBERTa positions)
    types = [torch.randint(0, 2, (n,)) if with_token_types else torch.zeros(n, dtype=torch.long) for n in LENGTHS]
    # transformers on one right-padded batch with an attention mask (one call, not one per sequence)
    longest, pad = max(LENGTHS), hf.config.pad_token_id
    padded = torch.stack([F.pad(s, (0, longest - len(s)), value=pad) for s in seqs])
    mask = torch.stack([torch.arange(longest) < len(s) for s in seqs]).long()
    padded_types = torch.stack([F.pad(t, (0, longest - len(t))) for t in types])
    with torch.inference_mode():
        states = hf(padded, attention_mask=mask, token_type_ids=padded_types).last_hidden_state  # [B, L, H]
        expected = states[mask.bool()]  # [T, H], the real tokens in order
        got = ours.model(torch.cat(seqs), torch.cat([torch.arange(n) for n in LENGTHS]), LENGTHS,
                         torch.cat(types) if with_token_types else None)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_bfloat16_stays_close_to_float32(tmp_path):
    make_tiny_encoder(tmp_path)
    fp32, bf16 = load_encoder(str(tmp_path), torch.float32), load_encoder(str(tmp_path), torch.bfloat16)
    ids = torch.randint(5, fp32.config.vocab_size, (30,), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = fp32.model(ids, torch.cat([torch.arange(20), torch.arange(10)]), [20, 10])
        b = bf16.model(ids, torch.cat([torch.arange(20), torch.arange(10)]), [20, 10])
    assert b.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(a, b.float(), dim=-1).min() > 0.99


def test_attention_buckets_pad_only_similar_lengths():
    buckets = attention_buckets([100, 100, 90, 80, 70, 70, 20, 3, 40])
    assert [(b.first_row, b.num_rows, b.num_seqs, b.length) for b in buckets] == [
        (0, 370, 4, 100), (370, 140, 2, 70), (510, 23, 2, 20), (533, 40, 1, 40)]
    assert buckets[0].slots.tolist() == [*range(290), *range(300, 380)]
    assert buckets[0].key_mask[:, 0, 0].sum(1).tolist() == [100, 100, 90, 80]
    assert buckets[1].slots is None and buckets[1].key_mask is None  # equal lengths: a plain view
    assert buckets[2].key_mask[:, 0, 0].sum(1).tolist() == [20, 3]  # short ones share a bucket anyway
    (short,) = attention_buckets([18, 15, 12, 12, 7, 2])
    assert short.num_seqs == 6 and short.length == 18
    with pytest.raises(ValueError, match="at least 1"):
        attention_buckets([3, 0])


def test_sentence_transformers_pipeline_is_read(tmp_path):
    make_tiny_encoder(tmp_path, sentence={"pooling_key": "cls_token", "normalize": True, "max_seq_length": 20})
    sentence = load_encoder(str(tmp_path), torch.float32).sentence
    assert (sentence.pooling, sentence.normalize, sentence.max_seq_length) == ("cls", True, 20)


def test_plain_folder_gets_sentence_transformers_defaults(tmp_path):
    make_tiny_encoder(tmp_path, max_position_embeddings=48)
    sentence = load_encoder(str(tmp_path), torch.float32).sentence
    assert (sentence.pooling, sentence.normalize, sentence.max_seq_length) == ("mean", False, 48)


def test_new_style_pooling_config_and_unsupported_modes(tmp_path):
    make_tiny_encoder(tmp_path, sentence={"pooling_key": "mean_tokens"})
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "lasttoken"}))
    assert load_encoder(str(tmp_path), torch.float32).sentence.pooling == "last"
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match=r"pooling mode \['max'\] .* not supported"):
        load_encoder(str(tmp_path), torch.float32)


def test_unsupported_sentence_module_is_named(tmp_path):
    make_tiny_encoder(tmp_path, sentence={})
    modules = json.loads((tmp_path / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="sentence_transformers.models.Dense' .* not supported"):
        load_encoder(str(tmp_path), torch.float32)


def test_decoder_folder_is_not_an_encoder(tiny_llama):
    with pytest.raises(ValueError, match="encoder architecture 'llama' is not supported"):
        load_encoder(str(tiny_llama[0]), torch.float32)
