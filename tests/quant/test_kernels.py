"""The native int8/int4 kernels at every instruction-set level this CPU can run, against
dequantize-then-F.linear; the dequantizing path; the measured row threshold."""

import pytest
import torch
import torch.nn.functional as F

from polyhead.kernels import buildable_levels, quant_dequantize_kernel, quant_gemm_kernel
from polyhead.quant.format import quantize
from polyhead.quant.linear import QuantizedEmbedding, QuantizedLinear
from polyhead.quant.tuning import tune_row_thresholds

pytestmark = pytest.mark.skipif(quant_gemm_kernel() is None, reason="no C++ compiler: the native kernel is unavailable")

LAYOUTS = [(8, None, True), (8, 32, True), (4, 32, True), (4, 32, False), (4, 64, False), (4, 128, True)]


@pytest.mark.parametrize("level", buildable_levels())
@pytest.mark.parametrize("bits,group,symmetric", LAYOUTS)
@pytest.mark.parametrize("rows", [1, 3, 8, 13])  # one pass, a partial pass, a full pass, two passes
def test_kernel_equals_dequantized_reference(level, bits, group, symmetric, rows):
    torch.manual_seed(rows)
    weight = quantize(torch.randn(72, 576), bits, group, symmetric)  # 576: a short last group at G=128
    bias = torch.randn(72)
    layer = QuantizedLinear(weight, bias)
    layer.kernel = quant_gemm_kernel(level)
    layer.dequantize_kernels = {dtype: quant_dequantize_kernel(dtype, level) for dtype in (torch.float32,
                                                                                            torch.bfloat16)}
    x = torch.randn(rows, 576)
    expected = F.linear(x, weight.dequantize(), bias)
    torch.testing.assert_close(layer.forward_kernel(x), expected, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(layer.forward_dequantized(x), expected, atol=2e-4, rtol=1e-4)
    bf16 = F.linear(x.bfloat16(), weight.dequantize().bfloat16(), bias.bfloat16())  # bf16 weight, bf16 matmul
    torch.testing.assert_close(layer.forward_dequantized(x.bfloat16()).float(), bf16.float(), atol=0.1, rtol=2e-2)


@pytest.mark.parametrize("level", buildable_levels())
@pytest.mark.parametrize("bits,group,symmetric", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_kernel_is_exact(level, bits, group, symmetric, dtype):
    weight = quantize(torch.randn(16, 576), bits, group, symmetric)
    out = torch.empty(16, 576, dtype=dtype)
    quant_dequantize_kernel(dtype, level)(weight.qweight.data_ptr(), weight.scales.data_ptr(),
                                          0 if weight.mins is None else weight.mins.data_ptr(), out.data_ptr(),
                                          16, 576, weight.group_size, bits, 2)
    # float32: one fused multiply-add against the reference's multiply then add, within one rounding;
    # bfloat16: that, rounded to nearest even as torch rounds
    expected = weight.dequantize().to(dtype)
    tol = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else {"atol": 0, "rtol": 8e-3}
    torch.testing.assert_close(out, expected, **tol)


def test_bfloat16_activations_come_back_in_bfloat16():
    weight = quantize(torch.randn(32, 64), 4, 32)
    x = torch.randn(2, 64).bfloat16()
    y = QuantizedLinear(weight)(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), F.linear(x.float(), weight.dequantize()), atol=3e-2, rtol=2e-2)


def test_non_contiguous_input():
    weight = quantize(torch.randn(32, 64), 8)
    x = torch.randn(3, 128)[:, ::2]
    torch.testing.assert_close(QuantizedLinear(weight)(x), F.linear(x, weight.dequantize()), atol=1e-4, rtol=1e-4)


def test_embedding_dequantizes_only_its_rows():
    weight = quantize(torch.randn(50, 64), 8, 32)
    ids = torch.tensor([0, 49, 7, 7])
    out = QuantizedEmbedding(weight, torch.float32)(ids)
    assert torch.equal(out, weight.dequantize()[ids])


def test_tuning_sets_one_threshold_per_shape_and_both_paths_agree():
    layers = [QuantizedLinear(quantize(torch.randn(64, 128), 4, 32)) for _ in range(3)]
    layers.append(QuantizedLinear(quantize(torch.randn(96, 128), 8)))
    thresholds = tune_row_thresholds(layers)
    assert set(thresholds) == {(64, 128, 4, 32, False), (96, 128, 8, 128, False)}
    assert len({layer.dequantize_from_rows for layer in layers[:3]}) == 1
    x = torch.randn(200, 128)  # past every candidate: whichever path each layer took, the same numbers
    for layer in layers:
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight_q.dequantize()), atol=2e-4, rtol=1e-4)


def test_tuning_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("POLYHEAD_QUANT_TUNING", "0")
    layer = QuantizedLinear(quantize(torch.randn(64, 128), 4, 32))
    assert tune_row_thresholds([layer]) == {} and layer.dequantize_from_rows is None
