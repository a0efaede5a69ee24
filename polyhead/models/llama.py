"""The Llama family (Llama, SmolLM, Mistral, Qwen2) on a flat ragged batch.

q|k|v and gate|up are each one fused projection: on a small CPU model the per-call
overhead of a linear layer is a large part of its cost, so fewer, larger calls win.
"""

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.models.attention import AttentionMetadata, paged_attention
from polyhead.models.config import ModelConfig
from polyhead.models.rotary import RotaryEmbedding, apply_rotary


class RMSNorm(nn.Module):
    """RMSNorm that can first add the residual: `norm(x, residual)` returns (normed, x + residual)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.kernel = None  # a native fused kernel, attached for inference (polyhead.models.inference)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if self.kernel is not None and not torch.is_grad_enabled():
            return self._forward_native(x, residual)
        if residual is None:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        residual = x + residual
        return F.rms_norm(residual, self.weight.shape, self.weight, self.eps), residual

    def _forward_native(self, x: torch.Tensor, residual: torch.Tensor | None):
        # x, residual: [T, hidden]; residual is updated in place to x + residual
        x = x.contiguous()
        out = torch.empty_like(x)
        rows, dim = x.shape
        self.kernel(x.data_ptr(), 0 if residual is None else residual.data_ptr(), self.weight.data_ptr(),
                    out.data_ptr(), rows, dim, self.eps, torch.get_num_threads())
        return out if residual is None else (out, residual)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.num_heads, self.num_kv_heads = config.layer_num_heads[layer_idx], config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        self.scale = self.head_dim ** -0.5

    def forward(self, x, cos, sin, kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        # x: [T, hidden]
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x)  # [T, (Hq + 2 Hkv) D]
        qk = qkv[:, : self.q_size + self.kv_size].view(num_tokens, self.num_heads + self.num_kv_heads, -1)
        qk = apply_rotary(qk, cos, sin)  # rotary on queries and keys in one pass
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads:]
        v = qkv[:, self.q_size + self.kv_size:].view(num_tokens, self.num_kv_heads, self.head_dim)
        return self.o_proj(paged_attention(q, k, v, kv_cache, meta, self.scale))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__()
        size = config.intermediate_sizes[layer_idx]  # per layer: a pruned model's layers may differ
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * size, bias=False)
        self.down_proj = nn.Linear(size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate).mul_(up))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, layer_idx)

    def forward(self, x, residual, cos, sin, kv_cache, meta):
        # x: this layer's input; residual: the running sum of the layers before (None at layer 0)
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, cos, sin, kv_cache, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    """The backbone: token ids in, final hidden states out (heads attach on top)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        with torch.device("cpu"):  # buffers are computed, never loaded, so never on `meta`
            self.rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings,
                                          config.rope_theta, config.rope_scaling)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_caches: list[torch.Tensor],  # per layer [2, Hkv, S, D]
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, hidden]
        x, residual = self.embed_tokens(input_ids), None
        cos, sin = self.rotary.lookup(positions, x.dtype)
        for layer, kv_cache in zip(self.layers, kv_caches):
            x, residual = layer(x, residual, cos, sin, kv_cache, meta)
        return self.norm(x, residual)[0]


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, positions, kv_caches, meta) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [N, hidden] for only the rows that sample -> [N, vocab] float32
        return self.lm_head(hidden).float()
