"""Tiny random Llamas and their dequantized twins: a Hugging Face folder whose every weight matrix
is replaced by quantize-then-dequantize of itself, the reference a quantized engine must equal."""

import shutil

import torch
from transformers import AutoModelForCausalLM

from polyhead.quant.attach import EMBEDDING_GROUP
from polyhead.quant.format import quantize


def dequantized_twin(folder, out, bits: int, group_size: int | None, symmetric: bool = True):
    """Save `folder`'s model with its weights rounded as polyhead's quantization rounds them."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    embedding = model.get_input_embeddings().weight
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
                w = module.weight
                if w is embedding and module is not model.get_input_embeddings():
                    continue  # a tied LM head: rounded once, with the embedding
                if w is embedding and bits == 4:
                    q = quantize(w, 8, EMBEDDING_GROUP)
                else:
                    q = quantize(w, bits, group_size, symmetric)
                w.copy_(q.dequantize())
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            shutil.copy(folder / name, out / name)
    return out
