"""polyhead: a high-concurrency, multi-task LLM engine on one shared backbone."""

import importlib

from polyhead.cpu import narrow_torch_dispatch

narrow_torch_dispatch()  # POLYHEAD_CPU_FEATURES narrows torch's dispatch too, if torch has not run yet

__version__ = "0.1.0"
__all__ = ["LLM", "EngineConfig", "PoolingParams", "RequestOutput", "SamplingParams"]

# Imported on first use, so `polyhead --help` answers without loading torch.
_EXPORTS = {"LLM": "polyhead.llm", "EngineConfig": "polyhead.config",
            "RequestOutput": "polyhead.engine.core.outputs", "SamplingParams": "polyhead.engine.core.params",
            "PoolingParams": "polyhead.engine.core.params"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'polyhead' has no attribute {name!r}")
