"""The sampling a model's authors recommend: the sampling fields of its folder's generation_config.json.

`serve` and `run` start from these (`--generation-config auto`, as vLLM's), and a request's own fields
win. Only the fields present in the file count, read as vLLM reads them; `do_sample` is not read (a
file that sets a temperature means it). A GGUF carries no generation_config.json, nor does the
default model's (SmolLM2-135M-Instruct's holds only token ids).
"""

import json
import logging
from pathlib import Path

from polyhead.engine.core.params import SamplingParams

logger = logging.getLogger(__name__)

GENERATION_FIELDS = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "repetition_penalty": float}
GENERATION_CONFIG_MODES = ("auto", "none")  # auto: the model's file; none: OpenAI's defaults

# What `polyhead run` samples with where the model's file says nothing. Measured on the default model
# ("Write a haiku about the sea", seeds 1 and 2): greedy and temperature 0.2 alone repeat one line
# 11-12 times in 120 tokens; with repetition_penalty 1.1 no line repeats.
RUN_DEFAULTS = {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.1}


def read_generation_defaults(folder: str | Path, mode: str = "auto") -> dict[str, float | int]:
    """The file's sampling fields ({} without a file or with mode none). A value SamplingParams
    refuses is a ValueError naming the file, so a bad file fails at start, not on every request."""
    if mode not in GENERATION_CONFIG_MODES:
        raise ValueError(f"--generation-config must be auto or none, got {mode!r}")
    path = Path(folder) / "generation_config.json"
    if mode == "none" or not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    defaults = {name: cast(raw[name]) for name, cast in GENERATION_FIELDS.items()
                if isinstance(raw.get(name), int | float) and not isinstance(raw.get(name), bool)}
    try:
        SamplingParams(**defaults)
    except ValueError as err:
        raise ValueError(f"{path}: {err} (start with --generation-config none to ignore the file)") from err
    return defaults
