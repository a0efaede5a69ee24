"""Our forward against transformers' on tiny random models of every supported architecture."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from polyhead.models.attention import AttentionMetadata, PrefillChunk, build_decode_bias, build_prefill_mask
from polyhead.models.loader import load_model
from tests.conftest import TINY_ARCHITECTURES, make_tiny_model


def _kv_caches(config, num_slots):
    return [torch.zeros(2, config.num_kv_heads, num_slots, config.head_dim) for _ in range(config.num_layers)]


@pytest.mark.parametrize("arch", list(TINY_ARCHITECTURES))
def test_logits_match_transformers_prefill_chunks_and_decode(tmp_path, arch):
    hf = make_tiny_model(tmp_path, arch)
    ours = load_model(str(tmp_path), torch.float32)
    assert ours.config.tie_word_embeddings == TINY_ARCHITECTURES[arch][1]["tie_word_embeddings"]
    torch.manual_seed(1)
    ids = torch.randint(0, ours.config.vocab_size, (40,))
    with torch.no_grad():
        expected = hf(ids[None]).logits[0]  # [40, V]

    # Blocks are scattered on purpose (reversed), as a paged cache would place them.
    block = 4
    table = torch.arange(50).flip(0)[:10]  # 10 blocks of 4 slots hold the 40 tokens
    slots = (table.unsqueeze(1) * block + torch.arange(block)).view(-1)
    kv = _kv_caches(ours.config, 200)
    window = ours.config.sliding_window
    logits = []
    with torch.inference_mode():
        # first 24 tokens in two prefill chunks, then one token per step through the decode path
        for start, end in ((0, 16), (16, 24)):
            chunk = PrefillChunk(0, end - start, end, None if start == 0 else table[: -(-end // block)],
                                 build_prefill_mask(start, end - start, window))
            meta = AttentionMetadata(slots[start:end], block, 0, None, None, None, [chunk], window)
            hidden = ours.model(ids[start:end], torch.arange(start, end), kv, meta)
            logits.append(ours.model.compute_logits(hidden))
        for pos in range(24, 40):
            num_blocks = pos // block + 1
            meta = AttentionMetadata(slots[pos:pos + 1], block, 1, table[:num_blocks][None], torch.tensor([pos + 1]),
                                     build_decode_bias([pos + 1], num_blocks * block, window, torch.float32), [],
                                     window)
            hidden = ours.model(ids[pos:pos + 1], torch.tensor([pos]), kv, meta)
            logits.append(ours.model.compute_logits(hidden))
    torch.testing.assert_close(torch.cat(logits), expected, atol=2e-4, rtol=1e-4)


def test_load_rejects_unknown_path():
    with pytest.raises(ValueError, match="not found"):
        load_model("/no/such/model", torch.float32)


def test_load_rejects_unsupported_architecture(tmp_path):
    from transformers import GPT2Config
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    gpt2.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported"):
        load_model(str(tmp_path), torch.float32)
