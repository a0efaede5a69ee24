"""A GGUF file's Q8_0 / Q4_0 / Q4_1 tensors as QuantizedWeights, without dequantizing them.

Each block's values are copied as they are (Q4 nibble order is polyhead's int4 order) and its
float16 scale (and min) widened to float32, so the weights polyhead computes with are exactly
those a dequantizing reader produces. llama.cpp's converter permutes the rows of attn_q / attn_k
for its rotary layout; the rows are put back here as transformers' GGUF reader puts back the
dequantized ones. Tensors of other types (F32 norms, K-quants) are left to the dequantized copy.
"""

from pathlib import Path

import numpy as np
import torch

from polyhead.quant.format import QuantizedWeight

# GGML type name -> (bits, has a min per block); every one has 32 weights per block
KEPT_TYPES = {"Q8_0": (8, False), "Q4_0": (4, False), "Q4_1": (4, True)}
_LAYER_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight"}


def read_quantized_tensors(path: Path, num_heads: int, num_kv_heads: int) -> dict[str, QuantizedWeight]:
    """Hugging Face name -> QuantizedWeight for every weight matrix the file stores as Q8_0/Q4_0/Q4_1."""
    from gguf import GGUFReader

    out = {}
    for tensor in GGUFReader(str(path)).tensors:
        kind = tensor.tensor_type.name
        name = hf_name(tensor.name)
        if kind not in KEPT_TYPES or name is None:
            continue
        bits, has_min = KEPT_TYPES[kind]
        weight = _from_blocks(np.asarray(tensor.data), bits, has_min)
        if name.endswith("q_proj.weight"):
            weight = _unpermute_rows(weight, num_heads)
        elif name.endswith("k_proj.weight"):
            weight = _unpermute_rows(weight, num_kv_heads)
        out[name] = weight
    return out


def hf_name(gguf_name: str) -> str | None:
    """blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight (None: not a weight matrix)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[3] == "weight" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
    return None


def _from_blocks(data: np.ndarray, bits: int, has_min: bool) -> QuantizedWeight:
    # data: uint8 [N, blocks * block_bytes]; a block is fp16 d, (fp16 m), then 32 int8 or 16 bytes of nibbles
    rows = data.shape[0]
    header = 4 if has_min else 2
    value_bytes = 32 if bits == 8 else 16
    blocks = data.reshape(rows, -1, header + value_bytes)
    scales = blocks[:, :, 0:2].copy().view(np.float16).reshape(rows, -1).astype(np.float32)
    mins = blocks[:, :, 2:4].copy().view(np.float16).reshape(rows, -1).astype(np.float32) if has_min else None
    values = np.ascontiguousarray(blocks[:, :, header:]).reshape(rows, -1)
    qweight = torch.from_numpy(values.view(np.int8) if bits == 8 else values).clone()
    return QuantizedWeight(qweight, torch.from_numpy(scales), None if mins is None else torch.from_numpy(mins),
                           bits, 32)


def _unpermute_rows(weight: QuantizedWeight, num_heads: int) -> QuantizedWeight:
    """Undo llama.cpp's rotary row order (what transformers' _reverse_permute_weights does): new row
    (h, a, b) is old row (h, b, a) of the head's [dim / 2, 2] grid."""
    n = weight.out_features
    order = torch.arange(n).view(num_heads, n // num_heads // 2, 2).transpose(1, 2).reshape(n)
    return weight.rows(order)
