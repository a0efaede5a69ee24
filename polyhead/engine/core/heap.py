"""Give the C heap's free memory back to the operating system.

Loading casts and concatenates weights and packs them for oneDNN; the temporaries are freed,
but glibc keeps freed chunks below its (adaptive) mmap threshold in the heap, where they stay
resident. `malloc_trim(0)` returns the free pages; elsewhere (not glibc) this does nothing.
"""

import ctypes
import ctypes.util
from functools import cache


@cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def trim_heap() -> bool:
    """Return freed heap pages to the OS; True when glibc's malloc_trim ran."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
