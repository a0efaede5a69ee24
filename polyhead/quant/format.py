"""polyhead's quantized weight: int8 or int4 values with float32 scales per group along K.

One layout serves every source: `polyhead quantize` / `--quantization int8|int4` (quantized here
from float weights) and a GGUF's Q8_0 / Q4_0 / Q4_1 blocks (copied, not re-quantized: the same
values, scales and mins). A weight w of group g dequantizes as
    int8: s_g * q                 (q in -127..127; per output channel: one group per row)
    int4: s_g * q + m_g           (q in 0..15; symmetric groups have m_g = -8 s_g and store no mins)
int4 values are nibble-packed per run of 32: byte j holds weight j (low nibble) and j + 16 (high),
llama.cpp's Q4 block order. Groups run along K; the last group of a row is shorter when G does
not divide K (576 = 4 x 128 + 64).
"""

from dataclasses import dataclass

import torch

BITS = (8, 4)
BLOCK = 32  # weights per nibble run; K must be a multiple of it


@dataclass
class QuantizedWeight:
    qweight: torch.Tensor  # bits 8: int8 [N, K]; bits 4: uint8 [N, K / 2], Q4 block order
    scales: torch.Tensor  # float32 [N, ceil(K / group_size)]
    mins: torch.Tensor | None  # float32 [N, ceil(K / group_size)]; None: symmetric
    bits: int  # 8 | 4
    group_size: int  # weights per scale along K (int8 per output channel: K)

    def __post_init__(self):
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {self.bits}")
        if self.group_size % BLOCK or self.in_features % BLOCK:
            raise ValueError(f"group size ({self.group_size}) and in_features ({self.in_features}) must be "
                             f"multiples of {BLOCK}")

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1] * (8 // self.bits)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.mins) if t is not None)

    def rows(self, index: torch.Tensor) -> "QuantizedWeight":
        """The rows `index` (e.g. an embedding lookup's token ids) as a smaller QuantizedWeight."""
        return QuantizedWeight(self.qweight[index], self.scales[index],
                               None if self.mins is None else self.mins[index], self.bits, self.group_size)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K]: the reference every kernel is tested against."""
        q = unpack_int4(self.qweight) if self.bits == 4 else self.qweight
        k = q.shape[1]
        scales = self.scales.repeat_interleave(self.group_size, dim=1)[:, :k]
        if self.mins is not None:
            offsets = self.mins.repeat_interleave(self.group_size, dim=1)[:, :k]
        elif self.bits == 4:
            offsets = -8.0 * scales
        else:
            return q.float() * scales
        return q.float() * scales + offsets


def quantize(weight: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True
             ) -> QuantizedWeight:
    """Round-to-nearest quantization of a float weight [N, K]. int8: symmetric per output channel
    (group_size None) or per group; int4: per group, symmetric as llama.cpp's Q4_0 (the scale keeps
    the sign of the largest magnitude, so it maps to -8 exactly) or asymmetric as Q4_1 (min and range)."""
    w = weight.detach().float()
    k = w.shape[1]
    group = group_size or k
    groups = _groups(w, group)  # [N, num_groups, group] zero-padded
    if bits == 8:
        if not symmetric:
            raise ValueError("int8 is symmetric only")
        scales = groups.abs().amax(dim=-1) / 127.0
        q = torch.round(groups / _nonzero(scales)[..., None]).clamp(-127, 127)
        return QuantizedWeight(_ungroup(q, k).to(torch.int8), scales.contiguous(), None, 8, group)
    if bits != 4:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if symmetric:
        index = groups.abs().argmax(dim=-1, keepdim=True)
        scales = groups.gather(-1, index).squeeze(-1) / -8.0
        q = torch.round(groups / _nonzero(scales)[..., None] + 8.0).clamp(0, 15)
        mins = None
    else:
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scales = (high - low) / 15.0
        q = torch.round((groups - low[..., None]) / _nonzero(scales)[..., None]).clamp(0, 15)
        mins = low.contiguous()
    return QuantizedWeight(pack_int4(_ungroup(q, k).to(torch.uint8)), scales.contiguous(), mins, 4, group)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 values 0..15 [N, K] -> [N, K / 2] in Q4 block order."""
    n, k = q.shape
    runs = q.view(n, k // BLOCK, 2, BLOCK // 2)
    return (runs[:, :, 0] | (runs[:, :, 1] << 4)).reshape(n, k // 2).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    n, half = packed.shape
    runs = packed.view(n, half // (BLOCK // 2), BLOCK // 2)
    return torch.stack([runs & 0x0F, runs >> 4], dim=2).reshape(n, half * 2)


def _groups(w: torch.Tensor, group: int) -> torch.Tensor:
    n, k = w.shape
    padded = -(-k // group) * group
    return torch.nn.functional.pad(w, (0, padded - k)).view(n, padded // group, group)


def _ungroup(q: torch.Tensor, k: int) -> torch.Tensor:
    return q.reshape(q.shape[0], -1)[:, :k].contiguous()


def _nonzero(scales: torch.Tensor) -> torch.Tensor:
    return torch.where(scales == 0, torch.ones_like(scales), scales)  # an all-zero group stays zero


def concat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight | None:
    """One weight of the parts' rows in order (q|k|v, gate|up); None when their layouts differ
    (a file may store v_proj in more bits than q_proj), so the caller falls back to float."""
    first = parts[0]
    if any((p.bits, p.group_size, p.mins is None, p.in_features) !=
           (first.bits, first.group_size, first.mins is None, first.in_features) for p in parts):
        return None
    mins = None if first.mins is None else torch.cat([p.mins for p in parts])
    return QuantizedWeight(torch.cat([p.qweight for p in parts]), torch.cat([p.scales for p in parts]), mins,
                           first.bits, first.group_size)
