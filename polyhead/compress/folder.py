"""Write a pruned model as a Hugging Face folder: config.json (+ the `polyhead_pruning` block),
the source's tokenizer and generation files, and one model.safetensors.

    "polyhead_pruning": {"mode", "method", ..., "intermediate_sizes": [per layer],
                         "num_heads": [per layer], "num_kv_heads": [per layer]}

When every layer has the same sizes, the plain fields (intermediate_size, num_attention_heads)
hold them and transformers loads the folder as is. Otherwise they hold the largest layer's, and
only polyhead's loaders (models/loader.py, compress/transformers_model.py) read the per-layer sizes.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from polyhead.models.config import ModelConfig


def check_output_folder(output: str | Path) -> Path:
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"--output {str(output)!r} exists and is not an empty folder; choose a new one")
    return output


def pruning_block(config: ModelConfig, intermediate_sizes: list[int], num_heads: list[int], **info) -> dict:
    return {**info, "intermediate_sizes": list(intermediate_sizes), "num_heads": list(num_heads),
            "num_kv_heads": [config.num_kv_heads] * config.num_layers}


def write_pruned_folder(source: Path, output: str | Path, state: dict[str, torch.Tensor], block: dict,
                        head_dim: int) -> Path:
    """source: the folder pruned (its files other than weights and config are copied)."""
    hf = json.loads((source / "config.json").read_text())
    hf["intermediate_size"] = max(block["intermediate_sizes"])
    hf["num_attention_heads"] = max(block["num_heads"])
    hf["head_dim"] = head_dim  # no longer hidden_size / num_attention_heads
    hf["polyhead_pruning"] = block
    return write_model_folder(source, output, hf, state)


def write_model_folder(source: Path, output: str | Path, hf: dict, floats: dict[str, torch.Tensor],
                       write_more: Callable[[Path], None] | None = None) -> Path:
    """A new model folder: `source`'s files other than weights and config (tokenizer, generation
    config) copied, config.json = `hf`, model.safetensors = `floats`, and whatever `write_more`
    writes into the folder (a quantized.safetensors). Written aside, then renamed: a crash never
    leaves a half-written model where a loader would read it."""
    output = check_output_folder(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}-"))
    try:
        for item in source.iterdir():
            if item.is_file() and item.name != "config.json" and ".safetensors" not in item.name:
                shutil.copy2(item, staging / item.name)
        (staging / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in floats.items()}, staging / "model.safetensors",
                  metadata={"format": "pt"})
        if write_more is not None:
            write_more(staging)
        if output.exists():
            output.rmdir()
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output
