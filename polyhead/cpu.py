"""What this CPU can do, as polyhead's kernels and dtypes see it.

The native kernels are compiled for one instruction-set level, chosen from the CPU's flags:
avx512 (AVX-512 F/BW/DQ/VL, with or without BF16), avx2 (AVX2 + FMA: Zen 3, most laptops),
neon (aarch64) or scalar (plain loops, any CPU). Each kernel has a path per level and picks it
from the compiler's macros, so one source serves every machine.

POLYHEAD_CPU_FEATURES=avx2 (or scalar, or avx512 without its BF16 part) narrows the level below
what the CPU has, so the narrower paths can be built and tested on a wider machine. Set before
torch runs its first op (polyhead/__init__.py does it when polyhead is imported first), it also
narrows torch's own dispatch (ATEN_CPU_CAPABILITY) and oneDNN's (ONEDNN_MAX_CPU_ISA), so the
process behaves as it would on such a CPU: bf16 weight packing is refused, as on a Zen 3.
"""

import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LEVELS = ("scalar", "avx2", "avx512", "avx512bf16")  # x86, narrowest first
_LEVEL_FLAGS = {  # the /proc/cpuinfo flags each x86 level needs
    "avx2": {"avx2", "fma"},
    "avx512": {"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"},
    "avx512bf16": {"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"},
}
# gcc/clang targets per forced level; "native" tunes for this exact CPU where nothing is forced
_LEVEL_MARCH = {"scalar": "-march=x86-64", "avx2": "-march=x86-64-v3", "avx512": "-march=x86-64-v4",
                "avx512bf16": "-march=native"}
# what torch and oneDNN are narrowed to for a forced level (their own environment variables)
_TORCH_CAPABILITY = {"scalar": "default", "avx2": "avx2", "avx512": "avx512"}
_ONEDNN_ISA = {"scalar": "SSE41", "avx2": "AVX2", "avx512": "AVX512_CORE"}
ENV = "POLYHEAD_CPU_FEATURES"


@dataclass(frozen=True, slots=True)
class CpuFeatures:
    machine: str  # platform.machine(): x86_64, aarch64, ...
    level: str  # the kernels' instruction-set level: one of LEVELS, or "neon" on aarch64
    detected: str  # the level the CPU itself has (level is narrower when POLYHEAD_CPU_FEATURES forces it)
    flags: frozenset[str]  # the CPU's /proc/cpuinfo flags

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 dot products run in hardware (AVX512-BF16; AMX CPUs have it too): bf16 is fast only there."""
        return self.level == "avx512bf16"

    @property
    def is_forced(self) -> bool:
        return self.level != self.detected

    def compiler_flags(self) -> list[str]:
        if self.machine in ("aarch64", "arm64"):
            return ["-mcpu=native"] if self.level == "neon" else []
        if self.machine not in ("x86_64", "AMD64"):
            return []
        return ["-march=native"] if not self.is_forced else [_LEVEL_MARCH[self.level], "-mtune=native"]


@cache
def cpu_features() -> CpuFeatures:
    machine = platform.machine()
    flags = _cpuinfo_flags()
    if machine in ("aarch64", "arm64"):
        detected = "neon"
    elif machine in ("x86_64", "AMD64"):
        detected = next(level for level in reversed(LEVELS) if _LEVEL_FLAGS.get(level, set()) <= flags)
    else:
        detected = "scalar"
    return CpuFeatures(machine, forced_level(detected), detected, flags)


def forced_level(detected: str) -> str:
    """The level POLYHEAD_CPU_FEATURES asks for (never wider than `detected`), or `detected`."""
    wanted = os.environ.get(ENV, "").strip().lower()
    if not wanted:
        return detected
    allowed = ("scalar", detected) if detected not in LEVELS else LEVELS[: LEVELS.index(detected) + 1]
    if wanted not in allowed:
        raise ValueError(f"{ENV}={wanted!r}: this CPU supports {', '.join(allowed)} (it can narrow the "
                         f"kernels' level, never widen it past what the CPU has: {detected})")
    return wanted


def narrow_torch_dispatch() -> None:
    """Narrow torch's and oneDNN's dispatch to the forced level (before torch runs its first op)."""
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted in _TORCH_CAPABILITY:
        os.environ.setdefault("ATEN_CPU_CAPABILITY", _TORCH_CAPABILITY[wanted])
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", _ONEDNN_ISA[wanted])


def check_dtype_supported(dtype: str, field: str = "dtype") -> None:
    """bfloat16 needs native bf16 matmuls: elsewhere torch computes it ~50-100x slower than float32
    (1.2-1.9 GFLOP/s against 77-143 on a Zen 3), so it is refused rather than run slowly."""
    features = cpu_features()
    if dtype == "bfloat16" and not features.native_bf16:
        raise ValueError(f"{field} bfloat16 needs a CPU with native bf16 matmuls (AVX512-BF16); "
                         f"this one runs at level {features.level}, where bfloat16 computes ~50x slower than "
                         f"float32: use {field} float32 or auto (auto picks float32 here)")


def _cpuinfo_flags() -> frozenset[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return frozenset()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()
