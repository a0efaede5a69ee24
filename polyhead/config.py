"""Engine settings. The dataclass validates itself; each error names the field and its limit."""

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from polyhead.cpu import check_dtype_supported, cpu_features
from polyhead.engine.core.policy import POLICIES

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16")
QUANTIZATIONS = ("auto", "none", "int8", "int4")
QUANTIZATION_GROUP_SIZES = (32, 64, 128, None)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30}


@dataclass(slots=True)
class EngineConfig:
    model: str | None = None  # a local HF folder / .gguf path or a known name; None: the default model
    dtype: str = "auto"  # float32 | bfloat16 | auto (bfloat16 where the CPU has native bf16 matmuls);
    # bfloat16 elsewhere is refused: torch computes it there ~50x slower than float32
    # weights: auto keeps what the file stores (a GGUF's Q4_0/Q4_1/Q8_0, a `polyhead quantize` folder)
    # and leaves float weights float; none dequantizes everything; int8 | int4 quantize at load
    quantization: str = "auto"
    # int8 / int4: weights per scale (32, 64 or 128), or None: one scale per output channel (int8 only)
    quantization_group_size: int | None = 32
    max_model_len: int | None = None  # longest prompt + output; None: the model's own context
    # bytes for the paged KV cache, a size like "512MiB", or auto: max_num_seqs x max_model_len tokens of
    # this model's keys and values, capped at a quarter of MemAvailable (engine/decoder/kv_memory.py)
    kv_cache_memory: int | str = "auto"
    block_size: int = 16  # tokens per KV block
    max_num_seqs: int = 128  # sequences in one step at most
    max_num_batched_tokens: int = 512  # tokens in one step at most (decodes + prefill chunks)
    enable_prefix_caching: bool = True
    num_threads: int | None = None  # torch intra-op threads; None: leave torch's default
    seed: int = 0  # for requests without their own seed
    policy: str = "fcfs"  # fcfs | priority | fair: the waiting queue's order and who is preempted
    tenant_weights: dict[str, float] = field(default_factory=dict)  # fair: tenant -> share (absent: 1)
    task_weights: dict[str, float] = field(default_factory=dict)  # fair: task -> share within a tenant
    pooling_token_budget: int = 64  # tokens of each step kept for waiting pooling requests; 0: none
    max_loras: int = 4  # LoRA adapters resident at once (least recently used evicted); more may be registered
    max_lora_rank: int = 64  # largest LoRA rank r an adapter may have
    adapters: dict[str, str] = field(default_factory=dict)  # LoRA name -> PEFT folder, registered at start

    def __post_init__(self):
        if self.dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {self.dtype!r}")
        check_dtype_supported(self.dtype)
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {self.quantization!r}")
        if self.quantization_group_size not in QUANTIZATION_GROUP_SIZES:
            raise ValueError(f"quantization_group_size must be one of 32, 64, 128 or None (per output channel); "
                             f"got {self.quantization_group_size!r}")
        if self.quantization_group_size is None and self.quantization == "int4":
            raise ValueError("quantization_group_size None (per output channel) is for int8; int4 takes 32, 64 or 128")
        self.kv_cache_memory = parse_size(self.kv_cache_memory, "kv_cache_memory", allow_auto=True)
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_loras", "max_lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        for name in ("tenant_weights", "task_weights"):
            for key, weight in getattr(self, name).items():
                if not isinstance(weight, int | float) or not weight > 0:
                    raise ValueError(f"{name}[{key!r}] must be a number > 0, got {weight!r}")
        if self.pooling_token_budget < 0:
            raise ValueError(f"pooling_token_budget must be >= 0 (0 disables it), got {self.pooling_token_budget}")

    @property
    def torch_dtype(self) -> "torch.dtype":
        import torch  # here, not at the top: the HTTP process reads configs and never needs torch

        dtype = self.dtype
        if dtype == "auto":
            dtype = "bfloat16" if cpu_features().native_bf16 else "float32"
        return getattr(torch, dtype)


def parse_size(value: int | str, name: str, allow_auto: bool = False) -> int | str:
    """Bytes from a count or a size like "512MiB"; "auto" passes through where `allow_auto`."""
    if allow_auto and value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            auto = "auto, " if allow_auto else ""
            raise ValueError(f"{name} must be {auto}a byte count or a size like 512MiB or 2GiB, got {value!r}")
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"{name} must be > 0 bytes, got {value!r}")
    return size
