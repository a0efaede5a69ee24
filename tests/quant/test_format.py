"""polyhead's quantized layout: round-to-nearest quantization, nibble packing, GGUF blocks read as
they are (against the gguf package's own dequantizer), and llama.cpp's row order undone."""

import numpy as np
import pytest
import torch

from polyhead.quant.format import QuantizedWeight, concat_rows, pack_int4, quantize, unpack_int4


@pytest.mark.parametrize("bits,group,symmetric,bound", [(8, None, True, 1 / 254), (8, 32, True, 1 / 254),
                                                         (4, 32, True, 1 / 14), (4, 32, False, 1 / 28),
                                                         (4, 128, True, 1 / 14), (4, 64, False, 1 / 28)])
def test_rounding_error_stays_within_half_a_step(bits, group, symmetric, bound):
    torch.manual_seed(0)
    w = torch.randn(40, 576)  # 576 = 4 x 128 + 64: the last group of a G=128 row is shorter
    q = quantize(w, bits, group, symmetric)
    err = (q.dequantize() - w).abs()
    # half a quantization step of each group's range (amax for symmetric, max - min otherwise)
    size = group or 576
    padded = torch.nn.functional.pad(w, (0, -(-576 // size) * size - 576)).view(40, -1, size)
    scale = padded.abs().amax(-1) if symmetric else padded.amax(-1) - padded.amin(-1)
    limit = scale.repeat_interleave(size, 1)[:, :576] * bound * 2 + 1e-6
    assert (err <= limit).all()
    assert q.scales.shape == (40, -(-576 // size))
    assert (q.mins is None) == symmetric


def test_symmetric_int4_maps_the_largest_magnitude_exactly_as_q4_0():
    w = torch.tensor([[-3.0, 1.0] + [0.5] * 30])
    q = quantize(w, 4, 32)
    assert q.dequantize()[0, 0].item() == -3.0  # scale = max / -8: the extreme is exact
    assert unpack_int4(q.qweight)[0, 0].item() == 0


def test_nibble_order_is_q4_block_order():
    values = torch.arange(64, dtype=torch.uint8).remainder(16).view(1, 64)
    packed = pack_int4(values)
    assert packed.shape == (1, 32)
    assert packed[0, 0].item() == values[0, 0].item() | (values[0, 16].item() << 4)  # byte j: j and j + 16
    assert torch.equal(unpack_int4(packed), values)


def test_all_zero_groups_stay_zero_and_bad_shapes_are_refused():
    q = quantize(torch.zeros(2, 64), 4, 32, symmetric=False)
    assert torch.equal(q.dequantize(), torch.zeros(2, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        quantize(torch.randn(2, 48), 8)
    with pytest.raises(ValueError, match="int8 is symmetric only"):
        quantize(torch.randn(2, 64), 8, symmetric=False)


def test_concat_rows_keeps_one_layout_or_refuses():
    a, b = quantize(torch.randn(3, 64), 4, 32), quantize(torch.randn(5, 64), 4, 32)
    fused = concat_rows([a, b])
    assert torch.equal(fused.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    assert concat_rows([a, quantize(torch.randn(5, 64), 8)]) is None


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_blocks_are_read_as_gguf_dequantizes_them(kind):
    from gguf import GGMLQuantizationType, quants

    from polyhead.quant.gguf import KEPT_TYPES, _from_blocks

    qtype = GGMLQuantizationType[kind]
    data = np.random.default_rng(0).standard_normal((24, 128)).astype(np.float32)
    blocks = quants.quantize(data, qtype)  # uint8 [24, bytes per row]
    bits, has_min = KEPT_TYPES[kind]
    weight = _from_blocks(blocks, bits, has_min)
    expected = torch.from_numpy(quants.dequantize(blocks, qtype))
    torch.testing.assert_close(weight.dequantize(), expected, atol=1e-6, rtol=1e-6)


def test_rotary_rows_are_put_back_as_transformers_does():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from polyhead.quant.gguf import _unpermute_rows

    w = quantize(torch.randn(48, 64), 8, 32)  # 4 heads of dim 12
    expected = LlamaTensorProcessor()._reverse_permute_weights(w.dequantize().numpy(), 4, 4)
    torch.testing.assert_close(_unpermute_rows(w, 4).dequantize(), torch.from_numpy(expected))


def test_rows_pick_embedding_rows():
    w = quantize(torch.randn(10, 64), 4, 32, symmetric=False)
    ids = torch.tensor([3, 3, 7])
    assert isinstance(w.rows(ids), QuantizedWeight)
    assert torch.equal(w.rows(ids).dequantize(), w.dequantize()[ids])
