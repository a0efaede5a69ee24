"""Per-row LoRA in one batch: each wrapped linear runs its base weights once over every row,
then, for each adapter present in the step, two small matmuls over that adapter's rows only
(the grouped form of Punica's / S-LoRA's segmented matmul). Rows without an adapter cost
nothing extra, and a step with no adapter rows takes the base layer's own fast path.

The rows are grouped once per step (LoRABatch, built by the runner); every layer reuses it.
"""

from dataclasses import dataclass

import torch
from torch import nn

from polyhead.lora.adapter import AdapterWeights, FusedLoRA

# the linear layers an adapter may change, by their names in our Llama model
TARGET_MODULES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass(slots=True)
class LoRAGroup:
    """The rows of one step that use one adapter."""

    adapter: AdapterWeights  # the resident adapter these rows use
    start: int  # first row of the span, when the rows are one contiguous span of the flat batch
    end: int  # one past its last row
    rows: torch.Tensor | None  # [n] int64 rows of the flat batch when not contiguous; None when they are


@dataclass(slots=True)
class LoRABatch:
    """A step's per-row adapter assignment: one group per distinct adapter (base rows are in none)."""

    groups: list[LoRAGroup]

    @classmethod
    def from_row_adapters(cls, spans: list[tuple[int, AdapterWeights | None]]) -> "LoRABatch | None":
        """`spans`: (number of rows, adapter or None) per request, in flat-batch order."""
        by_adapter: dict[str, tuple[AdapterWeights, list[int]]] = {}
        row = 0
        for num_rows, adapter in spans:
            if adapter is not None:
                by_adapter.setdefault(adapter.name, (adapter, []))[1].extend(range(row, row + num_rows))
            row += num_rows
        if not by_adapter:
            return None
        groups = []
        for adapter, rows in by_adapter.values():
            start, end = rows[0], rows[-1] + 1
            contiguous = end - start == len(rows)
            groups.append(LoRAGroup(adapter, start, end, None if contiguous else torch.tensor(rows)))
        return cls(groups)


class LoRAState:
    """Shared by every wrapped layer of one model: the current step's LoRABatch (None: no adapter rows)."""

    def __init__(self):
        self.batch: LoRABatch | None = None


class LoRALinear(nn.Module):
    """Wraps whatever the linear is (nn.Linear, PackedLinear): y = base(x) + per-group LoRA."""

    def __init__(self, base: nn.Module, key: str, state: LoRAState):
        super().__init__()
        self.base = base
        self.key = key  # our module name, e.g. "model.layers.3.self_attn.qkv_proj"
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in] -> [T, out]
        y = self.base(x)
        batch = self.state.batch
        if batch is None:
            return y
        for group in batch.groups:
            lora = group.adapter.modules.get(self.key)
            if lora is not None:
                apply_group(x, y, group, lora)
        return y


def apply_group(x: torch.Tensor, y: torch.Tensor, group: LoRAGroup, lora: FusedLoRA) -> None:
    """y[rows] += (x[rows] @ A.T) @ B.T, in place on the base output."""
    if group.rows is None:  # one contiguous span: views, no gather or scatter
        y[group.start:group.end].addmm_(x[group.start:group.end] @ lora.a.t(), lora.b.t())
    else:
        xa = x.index_select(0, group.rows) @ lora.a.t()  # [n, R]
        y.index_add_(0, group.rows, xa @ lora.b.t())  # [n, out] added into its rows


def attach_lora(model: nn.Module) -> LoRAState:
    """Wrap every target linear of a built model (in place, once); returns the state the runner
    sets each step. Wraps whatever is there, so it works before or after packing."""
    existing = getattr(model, "lora_state", None)
    if existing is not None:
        return existing
    state = LoRAState()
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in TARGET_MODULES:
                setattr(module, child_name, LoRALinear(child, f"{name}.{child_name}", state))
    model.lora_state = state
    return state
