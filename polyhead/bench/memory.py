"""Memory figures for the benchmarks: the process's resident set and the bytes a served model holds."""

from itertools import chain

from torch import nn


def process_rss_bytes() -> int:
    """This process's resident memory (VmRSS in /proc/self/status); 0 where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0
    return int(line.split()[1]) * 1024  # reported in kB


def model_tensor_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of `model`, each storage once (tied weights count once).
    oneDNN-packed weights hide their storage; they count as their logical size."""
    seen, total = set(), 0
    for tensor in chain(model.parameters(), model.buffers()):
        if tensor.is_mkldnn:
            key, size = id(tensor), tensor.numel() * tensor.element_size()
        else:
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        if key not in seen:
            seen.add(key)
            total += size
    return total
