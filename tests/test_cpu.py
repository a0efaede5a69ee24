"""CPU features: the kernels' level, POLYHEAD_CPU_FEATURES narrowing it (and torch's dispatch with
it), and bfloat16 refused where it is not native — what an AVX2-only CPU (a Zen 3) sees."""

import json
import os
import subprocess
import sys

import pytest

from polyhead.cpu import LEVELS, CpuFeatures, check_dtype_supported, cpu_features, forced_level

AVX2_ONLY = CpuFeatures("x86_64", "avx2", "avx2", frozenset({"avx2", "fma"}))


def test_detected_level_matches_the_cpu_flags():
    features = cpu_features()
    if features.machine == "x86_64":
        assert features.detected in LEVELS
        assert ("avx512_bf16" in features.flags) == (features.detected == "avx512bf16")
        assert ("avx2" in features.flags) == (features.detected != "scalar")


def test_forcing_narrows_but_never_widens(monkeypatch):
    monkeypatch.setenv("POLYHEAD_CPU_FEATURES", "avx2")
    assert forced_level("avx512bf16") == "avx2"
    monkeypatch.setenv("POLYHEAD_CPU_FEATURES", "scalar")
    assert forced_level("avx2") == "scalar"
    monkeypatch.setenv("POLYHEAD_CPU_FEATURES", "avx512")
    with pytest.raises(ValueError, match="never widen it past what the CPU has: avx2"):
        forced_level("avx2")
    monkeypatch.setenv("POLYHEAD_CPU_FEATURES", "sse9")
    with pytest.raises(ValueError, match="POLYHEAD_CPU_FEATURES='sse9'"):
        forced_level("avx512bf16")


def test_compiler_flags_per_level():
    assert CpuFeatures("x86_64", "avx2", "avx2", frozenset()).compiler_flags() == ["-march=native"]
    assert CpuFeatures("x86_64", "avx2", "avx512bf16", frozenset()).compiler_flags()[0] == "-march=x86-64-v3"
    assert CpuFeatures("x86_64", "scalar", "avx2", frozenset()).compiler_flags()[0] == "-march=x86-64"
    assert CpuFeatures("aarch64", "neon", "neon", frozenset()).compiler_flags() == ["-mcpu=native"]
    assert not AVX2_ONLY.native_bf16
    assert CpuFeatures("x86_64", "avx512bf16", "avx512bf16", frozenset()).native_bf16


def test_bfloat16_is_refused_with_the_reason_where_not_native(monkeypatch):
    from polyhead import cpu

    monkeypatch.setattr(cpu, "cpu_features", lambda: AVX2_ONLY)
    with pytest.raises(ValueError, match=r"dtype bfloat16 needs a CPU with native bf16.*level avx2.*float32"):
        check_dtype_supported("bfloat16")
    with pytest.raises(ValueError, match=r"train.dtype bfloat16"):
        check_dtype_supported("bfloat16", "train.dtype")
    check_dtype_supported("float32")
    check_dtype_supported("auto")


def test_forced_avx2_process_behaves_as_a_zen3():
    """A fresh process with POLYHEAD_CPU_FEATURES=avx2: kernels at avx2, torch and oneDNN narrowed,
    auto picks float32, bfloat16 refused by EngineConfig and the trainer's config, no bf16 packing."""
    script = """
import json, polyhead, torch
from polyhead.config import EngineConfig
from polyhead.kernels import gemv_kernel, kernel_isa
from polyhead.models.packed_linear import can_pack
from polyhead.train.config_sections import TrainSettings
out = {"isa": kernel_isa(), "torch": torch.backends.cpu.get_cpu_capability(),
       "auto": str(EngineConfig().torch_dtype), "gemv": gemv_kernel() is not None,
       "pack_bf16": can_pack(torch.device("cpu"), torch.bfloat16)}
for name, make in (("engine", lambda: EngineConfig(dtype="bfloat16")),
                   ("train", lambda: TrainSettings(dtype="bfloat16").validate("train"))):
    try:
        make()
        out[name] = "accepted"
    except ValueError as error:
        out[name] = str(error)
settings = TrainSettings(dtype="auto")
settings.validate("train")
out["train_auto_bf16"] = settings.uses_bfloat16
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    env["POLYHEAD_CPU_FEATURES"] = "avx2"
    if cpu_features().detected not in ("avx2", "avx512", "avx512bf16"):
        pytest.skip("needs an x86 CPU with AVX2 to force the avx2 level")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["isa"] == "avx2" and out["torch"] == "AVX2"
    assert out["auto"] == "torch.float32" and not out["gemv"] and not out["pack_bf16"]
    assert "dtype bfloat16 needs a CPU with native bf16" in out["engine"]
    assert "train.dtype bfloat16 needs a CPU with native bf16" in out["train"]
    assert out["train_auto_bf16"] is False
