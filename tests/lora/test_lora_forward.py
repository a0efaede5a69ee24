"""Per-row LoRA in our forward: every row's logits equal PEFT's for that row's adapter (or the
plain model's for base rows), whichever mix of adapters shares the flat batch."""

import pytest
import torch

from polyhead.lora.adapter import load_adapter
from polyhead.lora.layer import LoRABatch, LoRALinear, attach_lora
from polyhead.models.attention import AttentionMetadata, PrefillChunk, build_prefill_mask
from polyhead.models.inference import prepare_for_inference
from polyhead.models.loader import load_model
from tests.lora.conftest import ADAPTERS


@pytest.fixture(scope="module")
def ours(lora_base):
    loaded = load_model(str(lora_base), torch.float32)
    prepare_for_inference(loaded.model)  # LoRA wraps the packed layers, as in serving
    attach_lora(loaded.model)
    return loaded


def flat_forward(loaded, sequences: list[list[int]], adapters: list) -> list[torch.Tensor]:
    """Prefill every sequence in one flat batch, sequence i with adapters[i]; logits per sequence."""
    config = loaded.config
    lens = [len(s) for s in sequences]
    kv = [torch.zeros(2, config.num_kv_heads, sum(lens), config.head_dim) for _ in range(config.num_layers)]
    starts = [sum(lens[:i]) for i in range(len(lens))]
    window = config.sliding_window
    chunks = [PrefillChunk(s, n, n, None, build_prefill_mask(0, n, window)) for s, n in zip(starts, lens)]
    meta = AttentionMetadata(torch.arange(sum(lens)), sum(lens), 0, None, None, None, chunks, window)
    ids = torch.tensor([t for s in sequences for t in s])
    positions = torch.cat([torch.arange(n) for n in lens])
    state = loaded.model.lora_state
    state.batch = LoRABatch.from_row_adapters(list(zip(lens, adapters)))
    try:
        with torch.inference_mode():
            logits = loaded.model.compute_logits(loaded.model(ids, positions, kv, meta))
    finally:
        state.batch = None
    return list(logits.split(lens))


def reference_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def prompts(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=gen).tolist() for n in lengths]


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_every_row_equals_peft(ours, adapters, references, name):
    weights = load_adapter(name, adapters[name], ours.config, torch.float32, max_rank=64)
    (seq,) = prompts([23], seed=1)
    (logits,) = flat_forward(ours, [seq], [weights])
    expected = reference_logits(references[name], seq)
    torch.testing.assert_close(logits, expected, atol=2e-4, rtol=1e-4)
    # the adapter changes the output: the comparison above could not pass on base weights alone
    assert (expected - reference_logits(references[None], seq)).abs().max() > 1e-2


def test_two_adapters_and_base_rows_in_one_batch(ours, adapters, references):
    """Interleaved rows (a, base, b, a): the `a` rows are not one contiguous span, so this runs
    the gather/scatter path as well as the contiguous one."""
    qv = load_adapter("qv", adapters["qv"], ours.config, torch.float32, max_rank=64)
    every = load_adapter("all", adapters["all"], ours.config, torch.float32, max_rank=64)
    seqs = prompts([9, 14, 5, 17], seed=2)
    batch = LoRABatch.from_row_adapters([(9, qv), (14, None), (5, every), (17, qv)])
    assert [g.rows is None for g in batch.groups] == [False, True]
    names = ["qv", None, "all", "qv"]
    for logits, seq, name in zip(flat_forward(ours, seqs, [qv, None, every, qv]), seqs, names):
        torch.testing.assert_close(logits, reference_logits(references[name], seq), atol=2e-4, rtol=1e-4)


def test_no_adapter_rows_take_the_base_path(ours):
    (seq,) = prompts([11], seed=3)
    (with_wrappers,) = flat_forward(ours, [seq], [None])
    wrapped = [m for m in ours.model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 4 * ours.config.num_layers
    assert LoRABatch.from_row_adapters([(11, None)]) is None  # no groups: each wrapper returns base(x) as is
    plain = load_model(str(ours.folder), torch.float32)
    prepare_for_inference(plain.model)
    (base,) = flat_forward_plain(plain, seq)
    torch.testing.assert_close(with_wrappers, base, atol=0, rtol=0)


def flat_forward_plain(loaded, seq):
    config = loaded.config
    kv = [torch.zeros(2, config.num_kv_heads, len(seq), config.head_dim) for _ in range(config.num_layers)]
    meta = AttentionMetadata(torch.arange(len(seq)), len(seq), 0, None, None, None,
                             [PrefillChunk(0, len(seq), len(seq), None, None)])
    with torch.inference_mode():
        return [loaded.model.compute_logits(loaded.model(torch.tensor(seq), torch.arange(len(seq)), kv, meta))]


def test_fused_layout(ours, adapters):
    """q|k|v targets share one stacked A and a block-diagonal B over the fused output."""
    weights = load_adapter("ko", adapters["ko"], ours.config, torch.float32, max_rank=64)
    qkv = weights.modules["model.layers.0.self_attn.qkv_proj"]
    q_size, kv_size = 4 * 16, 2 * 16
    assert qkv.a.shape == (2, 64) and qkv.b.shape == (q_size + 2 * kv_size, 2)  # only k: rank 2
    assert qkv.b[:q_size].abs().max() == 0 and qkv.b[q_size + kv_size:].abs().max() == 0
    assert weights.modules["model.layers.1.self_attn.o_proj"].a.shape == (6, 64)  # rank_pattern
    assert "model.layers.0.mlp.gate_up_proj" not in weights.modules


@pytest.mark.parametrize("arch", ["qwen2", "mistral-sliding-window"])
def test_other_architectures_equal_peft(tmp_path, arch):
    """qkv biases (Qwen2) stay outside the LoRA update; the sliding window does not touch it."""
    from tests.conftest import make_tiny_model
    from tests.lora.conftest import make_adapter, peft_reference

    make_tiny_model(tmp_path / "base", arch, seed=4)
    folder = make_adapter(tmp_path / "base", tmp_path / "adapter", seed=4, r=4, lora_alpha=8,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    loaded = load_model(str(tmp_path / "base"), torch.float32)
    prepare_for_inference(loaded.model)
    attach_lora(loaded.model)
    weights = load_adapter("a", folder, loaded.config, torch.float32, max_rank=64)
    seqs = prompts([20, 15], seed=5)
    for logits, seq, adapter in zip(flat_forward(loaded, seqs, [weights, None]), seqs, ["a", None]):
        reference = peft_reference(tmp_path / "base", folder)
        if adapter is None:
            with reference.disable_adapter():
                expected = reference_logits(reference, seq)
        else:
            expected = reference_logits(reference, seq)
        torch.testing.assert_close(logits, expected, atol=2e-4, rtol=1e-4)
