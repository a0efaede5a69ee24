"""`polyhead quantize`: a model in, a folder of int8 / int4 weights out, which `run`, `serve`,
`bench` and `LLM(...)` load as they are (quantization auto keeps what a folder stores).

The folder is the source's Hugging Face folder with its weight matrices moved into
quantized.safetensors (polyhead/quant/checkpoint.py's layout; each q/k/v, gate/up projection
quantized on its own, so the engine fuses them without re-rounding) and the rest (norms,
biases) in model.safetensors; config.json's `polyhead_quantization` block says how. Pruned
folders quantize too: the per-layer sizes pass through.
"""

import json
import time
from pathlib import Path

import torch

from polyhead.compress.folder import check_output_folder, write_model_folder
from polyhead.models.loader import read_float_weights
from polyhead.quant.attach import EMBEDDING_GROUP, QuantizationSpec
from polyhead.quant.checkpoint import QUANTIZED_FILE, save_quantized
from polyhead.quant.format import QuantizedWeight, quantize

_MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantize_folder(model: str | None, spec: QuantizationSpec, output: str | Path) -> Path:
    """Quantize `model` (a folder, a .gguf or a known name) into the new folder `output`."""
    from polyhead.models.loader import gguf_to_hf_folder
    from polyhead.models.registry import resolve_model_path

    output = check_output_folder(output)
    path = resolve_model_path(model)
    source = gguf_to_hf_folder(path) if path.suffix == ".gguf" else path
    hf = json.loads((source / "config.json").read_text())
    if "polyhead_quantization" in hf:
        raise ValueError(f"model {str(path)!r} is already quantized ({hf['polyhead_quantization']['name']})")
    state = read_float_weights(source)
    quantized, floats = {}, {}
    for name, tensor in state.items():
        if name.endswith(".weight") and name.split(".")[-2] in _MATRICES:
            quantized[name] = quantize(tensor, spec.bits, spec.group_size, spec.symmetric)
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            quantized[name] = _quantize_embedding(tensor, spec, is_embedding=name.startswith("model."),
                                                  tied=bool(hf.get("tie_word_embeddings")))
        else:
            floats[name] = tensor
    hf["polyhead_quantization"] = {"name": spec.name, "bits": spec.bits, "group_size": spec.group_size,
                                   "symmetric": spec.symmetric}
    return write_model_folder(source, output, hf, floats,
                              lambda folder: save_quantized(folder / QUANTIZED_FILE, quantized))


def _quantize_embedding(weight: torch.Tensor, spec: QuantizationSpec, is_embedding: bool, tied: bool
                        ) -> QuantizedWeight:
    # the engine's rule (quant/attach.py): an embedding, and so a tied LM head, stays 8-bit under int4
    if spec.bits == 4 and (is_embedding or tied):
        return quantize(weight, 8, EMBEDDING_GROUP)
    return quantize(weight, spec.bits, spec.group_size, spec.symmetric)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def run_quantize(args) -> int:
    group = None if args.group_size == "channel" else int(args.group_size)
    if args.method == "int8" and args.asymmetric:
        raise ValueError("--asymmetric applies to --method int4 (int8 is symmetric)")
    if args.method == "int4" and group is None:
        raise ValueError("--group-size channel applies to --method int8; int4 takes 32, 64 or 128")
    spec = QuantizationSpec(8 if args.method == "int8" else 4, group, symmetric=not args.asymmetric)
    start = time.perf_counter()
    folder = quantize_folder(args.model, spec, args.output)
    print(f"wrote {folder} ({spec.name}, {folder_bytes(folder) / 1e6:.1f} MB of weights) in "
          f"{time.perf_counter() - start:.1f} s; serve it with: polyhead serve --model {folder}")
    return 0
