"""Shared fixtures: tiny random models of each architecture (no files needed) and the real
default model, loaded once per session."""

import os
import socket
import threading
import time
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import uvicorn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from polyhead.config import EngineConfig
from polyhead.cpu import cpu_features
from polyhead.models.loader import load_model

# bfloat16 is refused where bf16 dot products are not hardware instructions (polyhead/cpu.py)
needs_native_bf16 = pytest.mark.skipif(not cpu_features().native_bf16,
                                       reason="needs native bf16 (AVX512-BF16): bfloat16 is refused on this CPU")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: 256 byte tokens plus 3 specials (ids 256..258)."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS})
    fast.chat_template = CHAT_TEMPLATE
    return fast


TINY_ARCHITECTURES = {
    "llama": (LlamaConfig, {"tie_word_embeddings": True}),
    "llama-untied-llama3-rope": (LlamaConfig, {"tie_word_embeddings": False, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    "qwen2": (Qwen2Config, {"tie_word_embeddings": False}),
    "mistral": (MistralConfig, {"tie_word_embeddings": False, "sliding_window": None}),
    "mistral-sliding-window": (MistralConfig, {"tie_word_embeddings": False, "sliding_window": 12}),
}


def make_tiny_model(folder, arch: str = "llama", seed: int = 0, num_layers: int = 2):
    """Save a tiny random model of `arch` with its tokenizer into `folder`; return the HF model."""
    config_cls, extra = TINY_ARCHITECTURES[arch]
    tokenizer = tiny_tokenizer()
    config = config_cls(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=0,
        initializer_range=0.2, **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if arch == "qwen2":  # random biases, so a bias mix-up cannot hide behind zeros
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.2)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    return folder, make_tiny_model(folder, "llama")


def make_engine(folder, **options):
    from polyhead.engine.core.engine import Engine
    from polyhead.engine.decoder.backend import DecoderBackend

    options.setdefault("dtype", "float32")
    options.setdefault("kv_cache_memory", "16MiB")
    return Engine(DecoderBackend(EngineConfig(model=str(folder), **options)))


@pytest.fixture(scope="session")
def default_model():
    """The real default model in float32, loaded once (the GGUF is converted once into the cache)."""
    return load_model(None, torch.float32)


@pytest.fixture(scope="session")
def hf_default_model(default_model):
    return AutoModelForCausalLM.from_pretrained(default_model.folder, dtype=torch.float32).eval()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app, start_timeout_s: float = 30):
    """Run an ASGI app on 127.0.0.1 at a free port in a thread; yields its base URL; stops it after."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        assert time.monotonic() < deadline, f"server did not start in {start_timeout_s} s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


# --- encoders (BERT family) ------------------------------------------------------------------
BERT_WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "runs", "fast", "hello", "world", "##s", "##ing", ".", ","]


def tiny_bert_tokenizer():
    """A WordPiece tokenizer over a few words and the letters, [CLS]/[SEP] added like BERT's."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS, *"abcdefghijklmnopqrstuvwxyz",
             *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    vocab = list(dict.fromkeys(vocab))  # "a" is a word and a letter: one id, all ids below the vocab size
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)


TINY_ENCODERS = {"bert": "BertConfig", "roberta": "RobertaConfig", "xlm-roberta": "XLMRobertaConfig"}


def make_tiny_encoder(folder, arch: str = "bert", seed: int = 0, sentence: dict | None = None,
                      max_position_embeddings: int = 64):
    """Save a tiny random encoder of `arch` with its tokenizer into `folder`, and, when `sentence`
    is given, a sentence-transformers pipeline beside it: {"pooling_key": "mean_tokens" (default) |
    "cls_token" | "max_tokens" | ..., "normalize": bool, "max_seq_length": int}. Returns the
    transformers model."""
    import json

    import transformers

    tokenizer = tiny_bert_tokenizer()
    config = getattr(transformers, TINY_ENCODERS[arch])(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_position_embeddings, type_vocab_size=2,
        pad_token_id=0 if arch == "bert" else 1, initializer_range=0.3, hidden_act="gelu")
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(config, add_pooling_layer=False).eval()
    with torch.no_grad():  # random LayerNorm parameters, so a mix-up of weight and bias shows
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if sentence is not None:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if sentence.get("normalize"):
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, f"pooling_mode_{sentence.get('pooling_key', 'mean_tokens')}": True}))
        (folder / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": sentence.get("max_seq_length", 32), "do_lower_case": False}))
    return model


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A tiny random BERT as a sentence-transformers folder: mean pooling, normalized, 24 tokens at most."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    return folder, make_tiny_encoder(folder, sentence={"normalize": True, "max_seq_length": 24})


def make_encoder_engine(folder, **options):
    from polyhead.engine.core.engine import Engine
    from polyhead.engine.encoder.backend import EncoderBackend

    options.setdefault("dtype", "float32")
    return Engine(EncoderBackend(EngineConfig(model=str(folder), **options)))


MINILM_SENTENCES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "Héllo wörld, naïve café — ça va? 😀👍🏽",
    "中文字符和日本語のテキスト、한국어도 있습니다。",
    "Ωμέγα and αλφα are Greek letters; Привет, мир!",
    "   leading and trailing spaces   ",
    "x",
    "1234567890 + 0.5 = ?? !!! ### @user https://example.com/path?q=1",
    "Transformers " * 60,  # ~120 word pieces
    " ".join(f"token{i}" for i in range(120)),  # far over 256 word pieces: truncated like sentence-transformers
    "The cat sat on the mat. The dog sat on the log. " * 8,
]


@pytest.fixture(scope="session")
def minilm_reference():
    """sentence-transformers' own embeddings of MINILM_SENTENCES (float32, offline, from the package's folder)."""
    from sentence_transformers import SentenceTransformer

    from polyhead.models.registry import resolve_model_path

    folder = resolve_model_path("all-MiniLM-L6-v2")
    model = SentenceTransformer(str(folder), device="cpu")
    return folder, model.encode(MINILM_SENTENCES, convert_to_tensor=True, batch_size=4)
