"""One engine per backbone, its backend chosen by the model's own config: a BERT-family folder gets
the encoder backend (embed / classify / tag), anything else (a Llama-family folder or a GGUF
file) the decoder backend. The server builds one engine per backbone this way."""

from polyhead.config import EngineConfig
from polyhead.engine.core.backend import Backend
from polyhead.engine.core.engine import Engine
from polyhead.engine.decoder.backend import DecoderBackend
from polyhead.engine.encoder.backend import EncoderBackend
from polyhead.models.registry import is_encoder_model


def build_backend(config: EngineConfig) -> Backend:
    return EncoderBackend(config) if is_encoder_model(config.model) else DecoderBackend(config)


def build_engine(config: EngineConfig) -> Engine:
    return Engine(build_backend(config))
