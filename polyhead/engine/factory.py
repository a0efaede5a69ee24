"""One engine per backbone, chosen by the model's own config: a BERT-family folder gets the
EncoderEngine (embed / classify), anything else (a Llama-family folder or a GGUF file) the
LLMEngine. The server builds one engine per backbone this way."""

from polyhead.config import EngineConfig
from polyhead.engine.core.engine import LLMEngine
from polyhead.engine.encoder.engine import EncoderEngine
from polyhead.models.encoder_loader import is_encoder_folder
from polyhead.models.registry import resolve_model_path


def is_encoder_model(model: str | None) -> bool:
    """Whether `model` (a path or a known name) is a BERT-family encoder."""
    path = resolve_model_path(model)
    return path.is_dir() and is_encoder_folder(path)


def build_engine(config: EngineConfig) -> LLMEngine | EncoderEngine:
    return EncoderEngine(config) if is_encoder_model(config.model) else LLMEngine(config)
