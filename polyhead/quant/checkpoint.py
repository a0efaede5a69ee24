"""QuantizedWeights in a safetensors file: `<name>.qweight`, `<name>.scales` and (asymmetric)
`<name>.mins`, with each weight's bits and group size in the file's metadata. Written atomically
(aside, then renamed), so a crash never leaves half a file where a loader would read it."""

import json
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from polyhead.quant.format import QuantizedWeight

QUANTIZED_FILE = "quantized.safetensors"  # beside a folder's float model.safetensors
_METADATA_KEY = "polyhead_quantization"


def save_quantized(path: Path, weights: dict[str, QuantizedWeight]) -> None:
    tensors, layout = {}, {}
    for name, weight in weights.items():
        tensors[f"{name}.qweight"] = weight.qweight.contiguous()
        tensors[f"{name}.scales"] = weight.scales.contiguous()
        if weight.mins is not None:
            tensors[f"{name}.mins"] = weight.mins.contiguous()
        layout[name] = {"bits": weight.bits, "group_size": weight.group_size}
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, staging, metadata={_METADATA_KEY: json.dumps(layout)})
    os.replace(staging, path)


def load_quantized(path: Path) -> dict[str, QuantizedWeight]:
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
        if _METADATA_KEY not in metadata:
            raise ValueError(f"{str(path)!r} is not a polyhead quantized file (no {_METADATA_KEY} metadata)")
        layout = json.loads(metadata[_METADATA_KEY])
        keys = set(file.keys())
        return {name: QuantizedWeight(file.get_tensor(f"{name}.qweight"), file.get_tensor(f"{name}.scales"),
                                      file.get_tensor(f"{name}.mins") if f"{name}.mins" in keys else None,
                                      spec["bits"], spec["group_size"])
                for name, spec in layout.items()}
