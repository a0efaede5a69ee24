"""Weight loading: a Hugging Face folder (config.json + safetensors), a `polyhead quantize`
folder or a GGUF file, with the weights quantized as EngineConfig.quantization says.

A GGUF is read once through transformers/gguf (dequantized to float32) and kept as a Hugging
Face folder in polyhead's cache, so later starts load safetensors in a second or two instead of
re-parsing and dequantizing the file. Its Q8_0/Q4_0/Q4_1 tensors are also kept as they are, once,
in that folder's quantized.safetensors (polyhead/quant/gguf.py): `quantization="auto"` serves
those, so the default model runs in the 4 bits it ships in.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections import ChainMap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from polyhead.models.config import ModelConfig, check_architecture
from polyhead.models.llama import LlamaForCausalLM
from polyhead.models.registry import resolve_model_path
from polyhead.quant.attach import QuantizationSpec, attach_quantized, quantize_model
from polyhead.quant.checkpoint import QUANTIZED_FILE, load_quantized, save_quantized
from polyhead.quant.format import QuantizedWeight, concat_rows
from polyhead.quant.gguf import read_quantized_tensors


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    tokenizer: object  # transformers PreTrainedTokenizerFast
    config: ModelConfig
    folder: Path  # the Hugging Face folder the weights came from (the GGUF's cached conversion)


def cache_dir() -> Path:
    return Path(os.environ.get("POLYHEAD_CACHE", Path.home() / ".cache" / "polyhead"))


def load_model(model: str | None, dtype: torch.dtype, quantization: str = "none",
               group_size: int | None = 32) -> LoadedModel:
    """`quantization`: auto keeps the weights a file stores quantized (others stay float); none
    dequantizes them; int8 / int4 quantize every weight matrix with `group_size` weights per scale
    (None: per output channel, int8)."""
    path = resolve_model_path(model)
    folder = gguf_to_hf_folder(path) if path.suffix == ".gguf" else path
    if not (folder / "config.json").is_file():
        raise ValueError(f"model {str(path)!r} is not a Hugging Face folder (no config.json) nor a .gguf file")
    from transformers import AutoConfig, AutoTokenizer

    hf_config = AutoConfig.from_pretrained(folder)
    config = ModelConfig.from_hf(hf_config)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config.eos_token_ids = _eos_token_ids(folder, config, tokenizer)
    with torch.device("meta"):
        net = LlamaForCausalLM(config)
    stored = _stored_quantized(path, folder, config)  # weights the file keeps quantized; {} for float files
    keep = quantization == "auto"
    weights = SafetensorsWeights(folder, dtype, skip=set(stored) if keep else set())
    extra = {name: w if keep else w.dequantize().to(dtype) for name, w in stored.items() if name not in weights}
    state = hf_to_polyhead_state_dict(ChainMap(weights, extra), config)
    quantized = {k: v for k, v in state.items() if isinstance(v, QuantizedWeight)}
    floats = {k: v for k, v in state.items() if not isinstance(v, QuantizedWeight)}
    missing, unexpected = net.load_state_dict(floats, assign=True, strict=False)
    if unexpected or set(missing) != set(quantized) | ({"lm_head.weight"} if config.tie_word_embeddings else set()):
        raise ValueError(f"weights in {str(folder)!r} do not fit the model: missing {missing}, unexpected {unexpected}")
    net.tie_weights()  # assign=True replaced the shared parameter
    if config.tie_word_embeddings and "model.embed_tokens.weight" in quantized:
        quantized["lm_head.weight"] = quantized["model.embed_tokens.weight"]  # one weight, held once
    attach_quantized(net, quantized, dtype)
    if quantization in ("int8", "int4"):
        quantize_model(net, QuantizationSpec(8 if quantization == "int8" else 4, group_size))
    return LoadedModel(net.eval().requires_grad_(False), tokenizer, config, folder)


def _stored_quantized(path: Path, folder: Path, config: ModelConfig) -> dict[str, QuantizedWeight]:
    """Hugging Face name -> QuantizedWeight of what the file stores quantized: a `polyhead quantize`
    folder's quantized.safetensors, or a GGUF's Q8_0/Q4_0/Q4_1 tensors (repacked once into its cache)."""
    cached = folder / QUANTIZED_FILE
    if not cached.is_file() and path.suffix == ".gguf":
        save_quantized(cached, read_quantized_tensors(path, config.num_heads, config.num_kv_heads))
    return load_quantized(cached) if cached.is_file() else {}


def hf_to_polyhead_state_dict(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face parameter names -> ours, concatenating q|k|v and gate|up."""
    # values are float tensors or QuantizedWeights (kept quantized); a fused group of them stays quantized
    out = {"model.embed_tokens.weight": hf["model.embed_tokens.weight"], "model.norm.weight": hf["model.norm.weight"]}
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = hf.get("lm_head.weight", hf["model.embed_tokens.weight"])
    for i in range(config.num_layers):
        src, dst = f"model.layers.{i}.", f"model.layers.{i}."
        attn = src + "self_attn."
        out[dst + "self_attn.qkv_proj.weight"] = _cat([hf[attn + f"{p}_proj.weight"] for p in "qkv"])
        if config.attention_bias:
            out[dst + "self_attn.qkv_proj.bias"] = torch.cat([hf[attn + f"{p}_proj.bias"] for p in "qkv"])
        out[dst + "self_attn.o_proj.weight"] = hf[attn + "o_proj.weight"]
        out[dst + "mlp.gate_up_proj.weight"] = _cat([hf[src + "mlp.gate_proj.weight"], hf[src + "mlp.up_proj.weight"]])
        out[dst + "mlp.down_proj.weight"] = hf[src + "mlp.down_proj.weight"]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[dst + f"{norm}.weight"] = hf[src + f"{norm}.weight"]
    return out


def _cat(parts: list) -> torch.Tensor | QuantizedWeight:
    """Rows of `parts` in order: quantized when all are, of one layout; float otherwise."""
    if all(isinstance(p, QuantizedWeight) for p in parts):
        fused = concat_rows(parts)
        if fused is not None:
            return fused
    return torch.cat([p.dequantize() if isinstance(p, QuantizedWeight) else p for p in parts])


def gguf_to_hf_folder(path: Path) -> Path:
    """Convert a GGUF file once into a cached Hugging Face folder; returns the folder."""
    stat = path.stat()
    # the format version (v2: config names its architectures) invalidates older conversions
    key = hashlib.sha256(f"v2:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_dir() / "gguf" / f"{path.stem}-{key}"
    if (folder / "model.safetensors").is_file():
        return folder
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    check_architecture(_gguf_architecture(path))  # before the slow part
    hf_config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(hf_config)
    hf_config.architectures = [type(skeleton).__name__]  # so other tools can load the cached folder too
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staging-"))
    try:  # written aside then renamed, so a crash never leaves a half-converted folder
        hf_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        save_file({k: v.contiguous() for k, v in tensors.items()}, staging / "model.safetensors")
        os.replace(staging, folder)
    except OSError:
        if not (folder / "model.safetensors").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _gguf_architecture(path: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.architecture")
    if field is None:
        raise ValueError(f"GGUF file {str(path)!r} has no general.architecture field")
    return bytes(field.parts[field.data[0]]).decode()


class SafetensorsWeights(Mapping):
    """A folder's float *.safetensors tensors (not its quantized.safetensors), each read when asked
    for and cast to `dtype`: converting a checkpoint then holds one layer's source tensors at a time
    beside the result, not the whole file (a GGUF's conversion is float32, twice the bfloat16
    weights) plus every cast copy. Names in `skip` (kept quantized) are never read."""

    def __init__(self, folder: Path, dtype: torch.dtype, skip: set[str] = frozenset()):
        files = sorted(f for f in folder.glob("*.safetensors") if f.name != QUANTIZED_FILE)
        if not files and not (folder / QUANTIZED_FILE).is_file():
            raise ValueError(f"model folder {str(folder)!r} holds no *.safetensors weights")
        self.dtype = dtype
        self._files = {}  # tensor name -> the open file holding it
        for file in files:
            handle = safe_open(str(file), framework="pt")
            self._files |= {name: handle for name in handle.keys() if name not in skip}  # noqa: SIM118

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._files[name].get_tensor(name).to(self.dtype)

    def __contains__(self, name: object) -> bool:  # without reading the tensor (Mapping's default would)
        return name in self._files

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def read_float_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's safetensors files, the quantized.safetensors beside them excepted."""
    files = sorted(f for f in folder.glob("*.safetensors") if f.name != QUANTIZED_FILE)
    if not files:
        raise ValueError(f"model folder {str(folder)!r} holds no *.safetensors weights")
    state = {}
    for file in files:
        state.update(load_file(file))
    return state


def _eos_token_ids(folder: Path, config: ModelConfig, tokenizer) -> tuple[int, ...]:
    ids = set(config.eos_token_ids)
    generation_config = folder / "generation_config.json"
    if generation_config.is_file():
        eos = json.loads(generation_config.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(ids))
