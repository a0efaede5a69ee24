"""The native fused residual add + RMSNorm against the torch path of the same module."""

import pytest
import torch

from polyhead.kernels import buildable_levels, rms_norm_kernel
from polyhead.models.llama import RMSNorm


@pytest.mark.skipif(rms_norm_kernel(torch.float32) is None, reason="no C++ compiler")
@pytest.mark.parametrize("level", buildable_levels())  # every path this CPU can run, narrower ones too
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 33])
def test_native_add_rms_norm_matches_torch(dtype, rows, level):
    torch.manual_seed(rows)
    norm = RMSNorm(96, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
    x, residual = torch.randn(rows, 96).to(dtype), torch.randn(rows, 96).to(dtype)
    with torch.no_grad():
        expected_plain = norm(x)
        expected, expected_residual = norm(x, residual.clone())
        norm.kernel = rms_norm_kernel(dtype, level)
        plain = norm(x)
        got, got_residual = norm(x, residual.clone())
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
    torch.testing.assert_close(plain, expected_plain, **tol)
    torch.testing.assert_close(got_residual, expected_residual, atol=0, rtol=0)  # one rounded add: exact
    torch.testing.assert_close(got, expected, **tol)
