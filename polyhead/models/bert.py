"""The BERT family (BERT, MiniLM, RoBERTa) as an encoder on a flat ragged batch.

The batch is several whole sequences concatenated without padding, and every linear layer,
norm and activation runs on that flat [T, hidden] tensor. Attention is bidirectional within a
sequence and never crosses into a neighbour. The runner lays sequences out longest first, and
attention takes them in buckets of similar length: a bucket of equal lengths is a plain
[sequences, heads, length, head_dim] view of the flat tensor (no copy, no mask); a bucket of
mixed lengths is padded to its longest for that one call, with a key mask. For batches of
short sentences this keeps both the work and the number of calls small: a call per sequence
pays per-call overhead hundreds of times (and on a busy 2-core machine each multi-threaded
call can wait a scheduler slice for its second thread), a block-diagonal mask over the whole
batch computes every pair of tokens, and padding only the attention (not the linears) to
similar lengths wastes little. BENCHMARKS.md has the numbers. Post-LN layers as in the
original BERT: x = LN(x + attn(x)), x = LN(x + mlp(x)).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.models.registry import ENCODER_ARCHITECTURES

# A bucket takes sequences down to this fraction of its longest: attention on a padded sequence
# then costs at most (1 / 0.75)^2 = 1.8x its own, and only attention sees the padding...
BUCKET_MIN_FILL = 0.75
# ...except that sequences up to this long share one bucket whatever their lengths: their
# attention is < 3% of a token's work in MiniLM even padded, and every extra call costs more.
SHORT_BUCKET_LEN = 64
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


@dataclass(slots=True)
class AttentionBucket:
    """Neighbouring sequences of similar length that attend in one call."""

    first_row: int  # its first token's row in the flat batch
    num_rows: int  # its tokens in the flat batch (sum of its sequences' lengths)
    num_seqs: int
    length: int  # its longest sequence; shorter ones are padded to it for the call
    slots: torch.Tensor | None  # [num_rows] each token's row in the padded [num_seqs * length]; None: no padding
    key_mask: torch.Tensor | None  # [num_seqs, 1, 1, length] bool, True = a real key; None: no padding


def attention_buckets(seq_lens: list[int]) -> list[AttentionBucket]:
    """Cut the batch (sequences in batch order) into buckets of neighbours whose lengths lie
    within BUCKET_MIN_FILL of the bucket's longest (all lengths, when that is at most
    SHORT_BUCKET_LEN). Longest-first order makes them as full as they can be; any order is correct."""
    runs: list[list[int]] = []
    for length in seq_lens:
        if length < 1:
            raise ValueError(f"a sequence in the batch has {length} tokens; each needs at least 1")
        longest = max(runs[-1]) if runs else 0
        if length <= longest and (longest <= SHORT_BUCKET_LEN or length >= BUCKET_MIN_FILL * longest):
            runs[-1].append(length)
        else:
            runs.append([length])
    buckets, row = [], 0
    for lens in runs:
        longest, num_rows = max(lens), sum(lens)
        slots = key_mask = None
        if min(lens) != longest:
            slots = torch.cat([torch.arange(n) + i * longest for i, n in enumerate(lens)])
            key_mask = (torch.arange(longest)[None, :] < torch.tensor(lens)[:, None])[:, None, None, :]
        buckets.append(AttentionBucket(row, num_rows, len(lens), longest, slots, key_mask))
        row += num_rows
    return buckets


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

    def forward(self, x: torch.Tensor, buckets: list[AttentionBucket]) -> torch.Tensor:
        # x: [T, hidden] -> [T, hidden]
        qkv = self.qkv_proj(x)  # [T, 3 * heads * D]
        return self.o_proj(ragged_attention(qkv, buckets, self.num_heads, self.head_dim))


def ragged_attention(qkv: torch.Tensor, buckets: list[AttentionBucket], num_heads: int, head_dim: int) -> torch.Tensor:
    """Bidirectional attention of each sequence over itself. qkv: [T, 3 * heads * D] (q|k|v) -> [T, heads * D]."""
    # Few calls per bucket on purpose: on 2 busy cores each multi-threaded call can wait for its
    # second thread, so a copy saved is worth more than its bytes.
    out = qkv.new_empty(qkv.shape[0], num_heads * head_dim) if len(buckets) > 1 else None
    for b in buckets:
        rows = slice(b.first_row, b.first_row + b.num_rows)
        qkv_b = qkv[rows]  # [num_rows, 3 * heads * D]
        if b.slots is not None:  # pad to the bucket's longest: [num_seqs * length, 3 * heads * D]
            qkv_b = qkv_b.new_zeros(b.num_seqs * b.length, qkv.shape[1]).index_copy_(0, b.slots, qkv_b)
        # [num_seqs, length, 3, heads, D] -> 3 x [num_seqs, heads, length, D], views
        q, k, v = qkv_b.view(b.num_seqs, b.length, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=b.key_mask)  # [num_seqs, heads, length, D]
        o = o.transpose(1, 2).reshape(b.num_seqs * b.length, -1)  # a view: the CPU kernel writes [.., length, heads, D]
        if out is None:  # one bucket: its result is the whole output
            return o if b.slots is None else o.index_select(0, b.slots)
        if b.slots is None:
            out[rows] = o
        else:
            torch.index_select(o, 0, b.slots, out=out[rows])
    return out


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

    def forward(self, x: torch.Tensor, buckets: list[AttentionBucket]) -> torch.Tensor:
        # x: [T, hidden] -> [T, hidden]
        x = self.attention_norm(x + self.attention(x, buckets))
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
        buckets = attention_buckets(seq_lens)  # once for all layers
        x = self.embeddings(input_ids, positions, token_type_ids)
        for layer in self.layers:
            x = layer(x, buckets)
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
