"""Tokenizers for the training-data tests: the byte-level tiny one (no files) and the default model's."""

import pytest
from transformers import AutoTokenizer

from tests.conftest import tiny_tokenizer


@pytest.fixture(scope="session")
def byte_tokenizer():
    """One token per byte, so every word of n letters is n subwords; has a chat template and eos."""
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The default model's tokenizer (SmolLM2: byte-level BPE with a chat template)."""
    from polyhead.models.loader import gguf_to_hf_folder
    from polyhead.models.registry import resolve_model_path

    return AutoTokenizer.from_pretrained(gguf_to_hf_folder(resolve_model_path(None)))


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run many tiny tensor ops: one thread avoids OpenMP start/spin costs on a busy CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
