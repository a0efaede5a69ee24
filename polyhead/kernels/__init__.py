"""Native CPU kernels (decode attention, small-batch bf16 GEMV, residual add + RMSNorm), compiled on first use with
the system's C++ compiler.

They use a plain C ABI called through ctypes (no torch headers), so a build takes about a
second instead of the ~30 s of a torch C++ extension. The shared library is cached under
polyhead's cache folder, keyed by the source and the CPU; when no compiler is present or the
build fails, the getters return None and callers use their torch paths.
Set POLYHEAD_NATIVE_KERNELS=0 to force the torch path.
"""

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_SOURCES = [Path(__file__).with_name(name) for name in ("paged_attention.cpp", "gemv.cpp", "rms_norm.cpp")]
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
_ATTENTION_ARGTYPES = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 7 + [ctypes.c_float, ctypes.c_int64, ctypes.c_int]


@cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("POLYHEAD_NATIVE_KERNELS", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        logger.warning("no C++ compiler found; polyhead uses its slower torch paths")
        return None
    source_bytes = b"".join(source.read_bytes() for source in [*_SOURCES, _SOURCES[0].with_name("bf16.h")])
    key = hashlib.sha256(source_bytes + " ".join(_FLAGS).encode() + _cpu_id().encode()).hexdigest()[:16]
    from polyhead.models.loader import cache_dir

    target = cache_dir() / "kernels" / f"polyhead-kernels-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            command = [compiler, *_FLAGS, *map(str, _SOURCES), "-o", str(built)]
            result = subprocess.run(command, check=False, capture_output=True, text=True)
            if result.returncode != 0:
                logger.warning("building polyhead's native kernels failed; using torch paths:\n%s", result.stderr)
                return None
            os.replace(built, target)  # atomic: a concurrent process sees the whole file or none
    library = ctypes.CDLL(str(target))
    for name in ("decode_attention_bf16", "decode_attention_f32"):
        getattr(library, name).argtypes = _ATTENTION_ARGTYPES
        getattr(library, name).restype = None
    library.gemv_bf16.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    library.gemv_bf16.restype = None
    for name in ("add_rms_norm_bf16", "add_rms_norm_f32"):
        getattr(library, name).argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_float, ctypes.c_int]
        getattr(library, name).restype = None
    return library


def _cpu_id() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "") \
        if cpuinfo.exists() else ""
    return platform.machine() + flags


def decode_attention_kernel(dtype: torch.dtype):
    """The native decode attention for `dtype`, or None when it is unavailable."""
    library = _library()
    if library is None or dtype not in (torch.bfloat16, torch.float32):
        return None
    return library.decode_attention_bf16 if dtype == torch.bfloat16 else library.decode_attention_f32


def gemv_kernel():
    """y = x W^T for a few bf16 rows with AVX512-BF16, or None where the CPU lacks it."""
    library = _library()
    if library is None or not library.gemv_bf16_available():
        return None
    return library.gemv_bf16


def rms_norm_kernel(dtype: torch.dtype):
    """Fused residual add + RMSNorm for `dtype`, or None when unavailable."""
    library = _library()
    if library is None or dtype not in (torch.bfloat16, torch.float32):
        return None
    return library.add_rms_norm_bf16 if dtype == torch.bfloat16 else library.add_rms_norm_f32
