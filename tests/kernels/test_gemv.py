"""The native bf16 GEMV (small batches) against a float32 reference and oneDNN's packed path."""

import pytest
import torch
import torch.nn.functional as F

from polyhead.kernels import gemv_kernel
from polyhead.models.packed_linear import GEMV_MAX_ROWS, PackedLinear, pack_linear_layers

pytestmark = pytest.mark.skipif(gemv_kernel() is None, reason="CPU without AVX512-BF16 or no C++ compiler")


@pytest.mark.parametrize("rows", [1, 2, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_matches_float_reference(rows, with_bias):
    torch.manual_seed(rows)
    weight = torch.randn(200, 96).bfloat16()
    bias = torch.randn(200).bfloat16() if with_bias else None
    x = torch.randn(rows, 96).bfloat16()
    layer = PackedLinear(weight, bias)
    assert layer.gemv is not None
    expected = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    torch.testing.assert_close(layer(x).float(), expected, atol=0.1, rtol=1e-2)


def test_non_contiguous_input_and_module_swap():
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8, bias=False))
    net = net.bfloat16()
    x = torch.randn(3, 128).bfloat16()[:, ::2]  # a strided view
    expected = net(x.contiguous()).float()
    packed = pack_linear_layers(net)
    assert isinstance(packed[0], PackedLinear) and isinstance(packed[2], PackedLinear)
    torch.testing.assert_close(packed(x).float(), expected, atol=0.05, rtol=2e-2)
