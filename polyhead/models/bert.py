"""The BERT family (BERT, MiniLM, RoBERTa) as an encoder on a flat ragged batch.

The batch is several whole sequences concatenated without padding. Attention is
bidirectional within a sequence and never crosses into a neighbour: the batch is laid out
so that sequences of equal length sit next to each other, and each such run is one batched
attention over a [sequences, heads, length, head_dim] view of the flat tensor, with no mask
and no padding. For batches of short sentences this does the least work: a call per sequence
pays per-call overhead hundreds of times, one padded call with a key mask computes the
padding, and a block-diagonal mask over the whole batch computes every pair of tokens
(BENCHMARKS.md has the numbers). Post-LN layers as in the original BERT: x = LN(x + attn(x)), x = LN(x + mlp(x)).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_ARCHITECTURES = ("bert", "roberta", "xlm-roberta")
# Up to this length, attention is q @ kᵀ, softmax, @ v in plain batched matmuls: for short rows the
# CPU flash kernel's blocking costs more than it saves (1.5x slower here), and the score tensor
# [sequences, heads, length, length] stays small. Longer sequences take the flash kernel.
MATMUL_ATTENTION_MAX_LEN = 64
_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}  # F.gelu's `approximate`


@dataclass(slots=True)
class EncoderConfig:
    architecture: str  # Hugging Face model_type: one of ENCODER_ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float
    max_position_embeddings: int  # rows of the position table (RoBERTa's include its offset)
    type_vocab_size: int  # token type (segment) ids; single sentences use type 0
    hidden_act: str = "gelu"  # gelu (erf) | gelu_new / gelu_pytorch_tanh (tanh approximation)
    position_offset: int = 0  # RoBERTa numbers positions from pad_token_id + 1; BERT from 0

    def __post_init__(self):
        check_encoder_architecture(self.architecture)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; supported: {', '.join(_ACTIVATIONS)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_positions(self) -> int:
        """The longest sequence the position table covers."""
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_hf(cls, hf) -> "EncoderConfig":
        model_type = getattr(hf, "model_type", None)
        check_encoder_architecture(model_type)
        if getattr(hf, "position_embedding_type", "absolute") not in (None, "absolute"):
            raise ValueError(f"position_embedding_type {hf.position_embedding_type!r} is not supported; "
                             f"supported: absolute")
        offset = (hf.pad_token_id or 0) + 1 if model_type != "bert" else 0
        return cls(architecture=model_type, vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
                   intermediate_size=hf.intermediate_size, num_layers=hf.num_hidden_layers,
                   num_heads=hf.num_attention_heads, layer_norm_eps=hf.layer_norm_eps,
                   max_position_embeddings=hf.max_position_embeddings, type_vocab_size=hf.type_vocab_size,
                   hidden_act=hf.hidden_act, position_offset=offset)


def check_encoder_architecture(model_type: str | None) -> None:
    if model_type not in ENCODER_ARCHITECTURES:
        raise ValueError(f"encoder architecture {model_type!r} is not supported; "
                         f"supported: {', '.join(ENCODER_ARCHITECTURES)}")


def length_groups(seq_lens: list[int]) -> list[tuple[int, int, int]]:
    """Runs of equal-length neighbours in a flat batch: (first row, sequences, tokens each).
    Sorting the sequences by length before concatenating them makes the runs as long as they
    can be; any order is correct."""
    groups, row = [], 0
    for length in seq_lens:
        if length < 1:
            raise ValueError(f"a sequence in the batch has {length} tokens; each needs at least 1")
        if groups and groups[-1][2] == length:
            start, count, _ = groups[-1]
            groups[-1] = (start, count + 1, length)
        else:
            groups.append((row, 1, length))
        row += length
    return groups


class Embeddings(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.position_offset = config.position_offset

    def forward(self, input_ids, positions, token_type_ids=None) -> torch.Tensor:
        # input_ids, positions, token_type_ids: [T] -> [T, hidden]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions + self.position_offset)
        if token_type_ids is None:  # one sentence per sequence: every token is type 0
            x += self.token_type_embeddings.weight[0]
        else:
            x += self.token_type_embeddings(token_type_ids)
        return self.norm(x)


class SelfAttention(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.scale = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor, groups: list[tuple[int, int, int]]) -> torch.Tensor:
        # x: [T, hidden] -> [T, hidden]
        qkv = self.qkv_proj(x)  # [T, 3 * heads * D]
        out = torch.empty_like(x)
        for start, count, length in groups:
            rows = slice(start, start + count * length)
            # [count, length, 3, heads, D] -> 3 x [count, heads, length, D], views of qkv
            q, k, v = qkv[rows].view(count, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            if length <= MATMUL_ATTENTION_MAX_LEN:  # plain matmuls beat the flash kernel on short rows
                weights = (q @ k.transpose(-1, -2)).mul_(self.scale).softmax(-1)  # [count, heads, length, length]
                o = weights @ v
            else:
                o = F.scaled_dot_product_attention(q, k, v)  # [count, heads, length, D]
            out[rows].view(count, length, self.num_heads, self.head_dim).copy_(o.transpose(1, 2))
        return self.o_proj(out)


class EncoderLayer(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.approximate = _ACTIVATIONS[config.hidden_act]
        self.is_activation_fused = False  # up_proj applies the GELU itself (set for inference)

    def forward(self, x: torch.Tensor, groups: list[tuple[int, int, int]]) -> torch.Tensor:
        # x: [T, hidden] -> [T, hidden]
        x = self.attention_norm(x + self.attention(x, groups))
        up = self.up_proj(x)  # [T, intermediate]
        if not self.is_activation_fused:
            up = F.gelu(up, approximate=self.approximate)
        return self.output_norm(x + self.down_proj(up))


class EncoderModel(nn.Module):
    """Token ids of whole sequences in, every token's final hidden state out (what Hugging Face
    calls `last_hidden_state`; pooling and heads apply on top)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))

    def forward(
        self,
        input_ids: torch.Tensor,  # [T], the sequences concatenated
        positions: torch.Tensor,  # [T], 0..len-1 within each sequence
        seq_lens: list[int],  # tokens of each sequence, in batch order; sum == T
        token_type_ids: torch.Tensor | None = None,  # [T]; None: all 0
    ) -> torch.Tensor:  # [T, hidden]
        groups = length_groups(seq_lens)
        x = self.embeddings(input_ids, positions, token_type_ids)
        for layer in self.layers:
            x = layer(x, groups)
        return x


def hf_to_encoder_state_dict(hf: dict[str, torch.Tensor], config: EncoderConfig) -> dict[str, torch.Tensor]:
    """Hugging Face BERT/RoBERTa parameter names -> ours, concatenating query|key|value.
    A task model's prefix (`bert.`, `roberta.`) is dropped; its pooler and heads are not ours."""
    prefix = next((p for p in ("bert.", "roberta.", "model.") if f"{p}embeddings.word_embeddings.weight" in hf), "")
    src = {k[len(prefix):]: v for k, v in hf.items() if k.startswith(prefix)}
    out = {}
    for ours, theirs in (("word_embeddings", "word_embeddings"), ("position_embeddings", "position_embeddings"),
                         ("token_type_embeddings", "token_type_embeddings")):
        out[f"embeddings.{ours}.weight"] = src[f"embeddings.{theirs}.weight"]
    out["embeddings.norm.weight"] = src["embeddings.LayerNorm.weight"]
    out["embeddings.norm.bias"] = src["embeddings.LayerNorm.bias"]
    for i in range(config.num_layers):
        s, d = f"encoder.layer.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            out[f"{d}attention.qkv_proj.{kind}"] = torch.cat(
                [src[f"{s}attention.self.{p}.{kind}"] for p in ("query", "key", "value")])
            out[f"{d}attention.o_proj.{kind}"] = src[f"{s}attention.output.dense.{kind}"]
            out[f"{d}attention_norm.{kind}"] = src[f"{s}attention.output.LayerNorm.{kind}"]
            out[f"{d}up_proj.{kind}"] = src[f"{s}intermediate.dense.{kind}"]
            out[f"{d}down_proj.{kind}"] = src[f"{s}output.dense.{kind}"]
            out[f"{d}output_norm.{kind}"] = src[f"{s}output.LayerNorm.{kind}"]
    return out
