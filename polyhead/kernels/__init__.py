"""Native CPU kernels (decode attention, small-batch bf16 GEMV, int8/int4 weight-only matmul,
residual add + RMSNorm), compiled on first use with the system's C++ compiler.

They use a plain C ABI called through ctypes (no torch headers), so a build takes about a
second instead of the ~30 s of a torch C++ extension. One source builds for every CPU: the
compiler's flags pick each kernel's path (AVX-512, AVX2+FMA, NEON or plain loops; see
polyhead/cpu.py, whose POLYHEAD_CPU_FEATURES narrows the level). The shared library is cached
under polyhead's cache folder, keyed by the source, the flags and the CPU; when no compiler is
present or the build fails, the getters return None and callers use their torch paths.
Set POLYHEAD_NATIVE_KERNELS=0 to force the torch path.
"""

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from functools import cache
from pathlib import Path

import torch

from polyhead.cpu import LEVELS, cpu_features

logger = logging.getLogger(__name__)

_SOURCES = [Path(__file__).with_name(name)
            for name in ("paged_attention.cpp", "gemv.cpp", "rms_norm.cpp", "quant_gemm.cpp")]
_HEADERS = [Path(__file__).with_name(name) for name in ("bf16.h", "simd.h")]
_FLAGS = ["-O3", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
_ATTENTION_ARGTYPES = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 7 + [ctypes.c_float, ctypes.c_int64, ctypes.c_int]


def _library() -> ctypes.CDLL | None:
    """The kernels built for this process's level (cpu_features().level)."""
    if os.environ.get("POLYHEAD_NATIVE_KERNELS", "1") == "0":
        return None
    return library_for_level(cpu_features().level)


@cache
def library_for_level(level: str) -> ctypes.CDLL | None:
    """The kernels built for `level` (one of polyhead.cpu.LEVELS at most as wide as this CPU's, or
    "neon"); None when no compiler is present or the build fails. Tests build every level."""
    flags = [*_FLAGS, *replace(cpu_features(), level=level).compiler_flags()]
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        logger.warning("no C++ compiler found; polyhead uses its slower torch paths")
        return None
    source_bytes = b"".join(source.read_bytes() for source in [*_SOURCES, *_HEADERS])
    key = hashlib.sha256(source_bytes + " ".join(flags).encode() + _cpu_id(cpu_features()).encode()).hexdigest()[:16]
    from polyhead.models.loader import cache_dir

    target = cache_dir() / "kernels" / f"polyhead-kernels-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            command = [compiler, *flags, *map(str, _SOURCES), "-o", str(built)]
            result = subprocess.run(command, check=False, capture_output=True, text=True)
            if result.returncode != 0:
                logger.warning("building polyhead's native kernels failed; using torch paths:\n%s", result.stderr)
                return None
            os.replace(built, target)  # atomic: a concurrent process sees the whole file or none
    library = ctypes.CDLL(str(target))
    for name in ("decode_attention_bf16", "decode_attention_f32"):
        getattr(library, name).argtypes = _ATTENTION_ARGTYPES
        getattr(library, name).restype = None
    library.kernel_isa.restype = ctypes.c_char_p
    library.gemv_bf16.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    library.gemv_bf16.restype = None
    library.gemv_bf16_native.restype = ctypes.c_int
    library.quant_gemm_f32.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
    library.quant_gemm_f32.restype = None
    for name in ("quant_dequantize_f32", "quant_dequantize_bf16"):
        getattr(library, name).argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int] * 2
        getattr(library, name).restype = None
    for name in ("add_rms_norm_bf16", "add_rms_norm_f32"):
        getattr(library, name).argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_float, ctypes.c_int]
        getattr(library, name).restype = None
    return library


def decode_attention_kernel(dtype: torch.dtype, level: str | None = None):
    """The native decode attention for `dtype` (at `level`; default: this process's), or None when
    it is unavailable."""
    library = _library() if level is None else library_for_level(level)
    if library is None or dtype not in (torch.bfloat16, torch.float32):
        return None
    return library.decode_attention_bf16 if dtype == torch.bfloat16 else library.decode_attention_f32


def gemv_kernel(level: str | None = None, native_only: bool = True):
    """y = x W^T for a few bf16 rows, or None when unavailable. With `native_only` (what serving
    asks), only where bf16 dot products are hardware instructions: elsewhere oneDNN is faster."""
    library = _library() if level is None else library_for_level(level)
    if library is None or (native_only and not library.gemv_bf16_native()):
        return None
    return library.gemv_bf16


def quant_gemm_kernel(level: str | None = None):
    """y = x W^T for float32 x and int8/int4 W (polyhead/quant/format.py's layout), or None."""
    library = _library() if level is None else library_for_level(level)
    return None if library is None else library.quant_gemm_f32


def quant_dequantize_kernel(dtype: torch.dtype = torch.float32, level: str | None = None):
    """The float32 or bfloat16 weight of an int8/int4 one, written into a caller's buffer; or None."""
    library = _library() if level is None else library_for_level(level)
    if library is None or dtype not in (torch.float32, torch.bfloat16):
        return None
    return library.quant_dequantize_bf16 if dtype == torch.bfloat16 else library.quant_dequantize_f32


def rms_norm_kernel(dtype: torch.dtype, level: str | None = None):
    """Fused residual add + RMSNorm for `dtype`, or None when unavailable."""
    library = _library() if level is None else library_for_level(level)
    if library is None or dtype not in (torch.bfloat16, torch.float32):
        return None
    return library.add_rms_norm_bf16 if dtype == torch.bfloat16 else library.add_rms_norm_f32


def _cpu_id(features) -> str:
    return features.machine + " ".join(sorted(features.flags))


def kernel_isa(level: str | None = None) -> str | None:
    """The path the kernels at `level` compiled to (avx512bf16, avx512, avx2, neon, scalar), or None."""
    library = _library() if level is None else library_for_level(level)
    return None if library is None else library.kernel_isa().decode()


def buildable_levels() -> list[str]:
    """Every kernel level this CPU can run: its own and each narrower one (for tests)."""
    detected = cpu_features().detected
    return ["scalar", detected] if detected not in LEVELS else list(LEVELS[: LEVELS.index(detected) + 1])
