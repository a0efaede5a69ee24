"""Model resolution and loading errors name what is wrong."""

import numpy as np
import pytest
import torch

from polyhead.models.loader import load_model
from polyhead.models.registry import DEFAULT_MODEL, resolve_model_path


def test_default_model_resolves_to_the_packaged_gguf():
    path = resolve_model_path(None)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert resolve_model_path(DEFAULT_MODEL) == resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == path


def test_gguf_of_an_unsupported_architecture_is_rejected(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "tiny-gpt2.gguf"
    writer = GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported; supported: llama, mistral, qwen2"):
        load_model(str(path), torch.float32)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_model(str(tmp_path), torch.float32)
