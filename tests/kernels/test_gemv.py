"""The native bf16 GEMV (small batches) against a float32 reference and oneDNN's packed path."""

import pytest
import torch
import torch.nn.functional as F

from polyhead.kernels import buildable_levels, gemv_kernel
from polyhead.models.packed_linear import GEMV_MAX_ROWS, PackedLinear, can_pack, pack_linear_layers
from tests.conftest import needs_native_bf16

kernel_missing = pytest.mark.skipif(gemv_kernel(native_only=False) is None, reason="no C++ compiler")


@kernel_missing
@pytest.mark.parametrize("level", buildable_levels())  # AVX512-BF16, AVX-512, AVX2 and plain paths
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("with_bias", [False, True])
def test_every_gemv_path_matches_float_reference(level, rows, with_bias):
    torch.manual_seed(rows)
    weight, x = torch.randn(200, 96).bfloat16(), torch.randn(rows, 96).bfloat16()
    bias = torch.randn(200).bfloat16() if with_bias else None
    y = torch.empty(rows, 200, dtype=torch.bfloat16)
    gemv_kernel(level, native_only=False)(x.data_ptr(), weight.data_ptr(), 0 if bias is None else bias.data_ptr(),
                                          y.data_ptr(), rows, 200, 96, 2)
    expected = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    torch.testing.assert_close(y.float(), expected, atol=0.1, rtol=1e-2)


@needs_native_bf16
@pytest.mark.parametrize("rows", [1, 2, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_layer_uses_gemv_for_few_rows(rows, with_bias):
    torch.manual_seed(rows)
    weight = torch.randn(200, 96).bfloat16()
    bias = torch.randn(200).bfloat16() if with_bias else None
    x = torch.randn(rows, 96).bfloat16()
    layer = PackedLinear(weight, bias)
    assert layer.gemv is not None
    expected = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    torch.testing.assert_close(layer(x).float(), expected, atol=0.1, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_input_and_module_swap(dtype):
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8, bias=False))
    net = net.to(dtype)
    x = torch.randn(3, 128).to(dtype)[:, ::2]  # a strided view
    expected = net(x.contiguous()).float()
    if not can_pack(x.device, dtype):
        pytest.skip("oneDNN packs bfloat16 weights only on AVX-512 CPUs")
    packed = pack_linear_layers(net)
    assert isinstance(packed[0], PackedLinear) and isinstance(packed[2], PackedLinear)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 2e-2}
    torch.testing.assert_close(packed(x).float(), expected, **tol)
