"""Read a PEFT LoRA adapter folder and map it onto our fused projections.

Our Llama forward fuses q|k|v into `qkv_proj` and gate|up into `gate_up_proj`. Each fused
layer gets one low-rank pair: the targeted slices' A matrices are stacked ([r_q + r_k + r_v,
in]) and B is block-diagonal ([q + k + v out, r_q + r_k + r_v], zero where a slice is not
targeted), with PEFT's scale folded into B. So a LoRA'd fused layer costs two small matmuls
per adapter, not two per slice: on this CPU a small matmul costs more in call overhead than
in the few extra multiplications by zero in B.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from polyhead.models.config import ModelConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# PEFT module name -> (our fused module, slice index within it)
_TARGETS = {
    "q_proj": ("self_attn.qkv_proj", 0), "k_proj": ("self_attn.qkv_proj", 1), "v_proj": ("self_attn.qkv_proj", 2),
    "o_proj": ("self_attn.o_proj", 0),
    "gate_proj": ("mlp.gate_up_proj", 0), "up_proj": ("mlp.gate_up_proj", 1),
    "down_proj": ("mlp.down_proj", 0),
}
_KEY = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight")
# config fields that change what the adapter computes and that we do not implement: field -> its "off" value
_UNSUPPORTED = {
    "use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False, "modules_to_save": None,
    "trainable_token_indices": None, "layer_replication": None, "use_qalora": False, "target_parameters": None,
    "alora_invocation_tokens": None, "use_bdlora": None, "kasa_config": None, "velora_config": None,
    "monteclora_config": None, "arrow_config": None,
}


@dataclass(slots=True)
class AdapterConfig:
    """What we use from adapter_config.json."""

    r: int  # default rank (rank_pattern may override per module; the tensors' shapes are checked against it)
    lora_alpha: float  # scale numerator (alpha_pattern may override per module)
    use_rslora: bool  # scale = alpha / sqrt(r) instead of alpha / r
    rank_pattern: dict[str, int]  # PEFT module-name pattern -> rank
    alpha_pattern: dict[str, float]  # PEFT module-name pattern -> alpha

    def scale(self, module_key: str, rank: int) -> float:
        key = _pattern_key(self.alpha_pattern, module_key)
        alpha = self.alpha_pattern[key] if key else self.lora_alpha
        return alpha / (rank ** 0.5 if self.use_rslora else rank)

    def rank(self, module_key: str) -> int:
        key = _pattern_key(self.rank_pattern, module_key)
        return self.rank_pattern[key] if key else self.r


@dataclass(slots=True)
class FusedLoRA:
    """One fused layer's low-rank update: y += (x @ a.T) @ b.T (scale already in b)."""

    a: torch.Tensor  # [R, in]: the targeted slices' A matrices stacked
    b: torch.Tensor  # [out, R]: block-diagonal, each block scaled by its slice's alpha / r

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(slots=True)
class AdapterWeights:
    """An adapter ready to run: our module names -> fused updates."""

    name: str
    modules: dict[str, FusedLoRA]  # e.g. "model.layers.3.self_attn.qkv_proj" -> update
    max_rank: int  # largest fused rank (sum over the slices of one fused layer)

    @property
    def num_bytes(self) -> int:
        return sum(m.a.nbytes + m.b.nbytes for m in self.modules.values())


def _pattern_key(patterns: dict, module_key: str) -> str | None:
    # PEFT's own matching (peft.utils.other.get_pattern_key): the pattern ends the module name
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", module_key):
            return pattern
    return None


def read_adapter_config(folder: str | Path) -> AdapterConfig:
    """Parse and check adapter_config.json; ValueError names the unsupported field."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"adapter folder {str(folder)!r} has no {CONFIG_FILE}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if raw.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path}: peft_type {raw.get('peft_type')!r} is not supported (only LORA)")
    for name, off in _UNSUPPORTED.items():
        value = raw.get(name, off)
        if value != off and value not in (None, False, [], {}):
            raise ValueError(f"{path}: {name}={value!r} is not supported")
    targets = raw.get("target_modules") or []
    if isinstance(targets, str):  # a regex over module names: the tensors say what it matched
        targets = []
    bad = [t for t in targets if t.split(".")[-1] not in _TARGETS]
    if bad:
        raise ValueError(f"{path}: target_modules {bad} are not supported; "
                         f"supported: {', '.join(_TARGETS)}")
    for name in ("r", "lora_alpha"):
        if not isinstance(raw.get(name), int | float) or raw[name] <= 0:
            raise ValueError(f"{path}: {name} must be a number > 0, got {raw.get(name)!r}")
    return AdapterConfig(int(raw["r"]), float(raw["lora_alpha"]), bool(raw.get("use_rslora", False)),
                         dict(raw.get("rank_pattern") or {}), dict(raw.get("alpha_pattern") or {}))


def _slice_sizes(config: ModelConfig) -> dict[str, tuple[int, list[int]]]:
    """Our fused module -> (in_features, output size of each slice)."""
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    hidden, inter = config.hidden_size, config.intermediate_size
    return {"self_attn.qkv_proj": (hidden, [q, kv, kv]), "self_attn.o_proj": (q, [hidden]),
            "mlp.gate_up_proj": (hidden, [inter, inter]), "mlp.down_proj": (inter, [hidden])}


def check_adapter(folder: str | Path, model_config: ModelConfig, max_rank: int) -> AdapterConfig:
    """Everything that can be checked without reading the tensors' data (the safetensors header
    has names and shapes): cheap enough to run when an adapter is registered."""
    config = read_adapter_config(folder)
    _read_tensors(Path(folder), config, model_config, max_rank, load=False)
    return config


def load_adapter(name: str, folder: str | Path, model_config: ModelConfig, dtype: torch.dtype,
                 max_rank: int) -> AdapterWeights:
    """Read, check and fuse an adapter (runs on the loader thread, off the step loop)."""
    config = read_adapter_config(folder)
    pairs = _read_tensors(Path(folder), config, model_config, max_rank, load=True)
    sizes = _slice_sizes(model_config)
    modules = {}
    for (layer, fused), slices in sorted(pairs.items()):
        _in_features, outs = sizes[fused]
        rank = sum(a.shape[0] for a, _, _ in slices.values())
        a_stack = torch.cat([slices[i][0] for i in sorted(slices)])  # [R, in]
        b_full = torch.zeros(sum(outs), rank)  # [out, R]
        col = 0
        for i in sorted(slices):
            a, b, scale = slices[i]
            row = sum(outs[:i])
            b_full[row:row + outs[i], col:col + a.shape[0]] = b.float() * scale
            col += a.shape[0]
        modules[f"model.layers.{layer}.{fused}"] = FusedLoRA(a_stack.to(dtype).contiguous(), b_full.to(dtype))
    return AdapterWeights(name, modules, max((m.rank for m in modules.values()), default=0))


def _read_tensors(folder: Path, config: AdapterConfig, model_config: ModelConfig, max_rank: int, load: bool):
    """-> {(layer, fused module): {slice index: (A [r, in], B [out, r], scale)}}; shapes are
    checked against the backbone. With load=False only shapes are read (tensors are None)."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"adapter folder {str(folder)!r} has no {WEIGHTS_FILE}")
    sizes = _slice_sizes(model_config)
    found: dict[tuple[int, str, str], dict[str, object]] = {}
    with safe_open(path, framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            match = _KEY.fullmatch(key)
            if match is None or match.group(3) not in _TARGETS:
                raise ValueError(f"{path}: tensor {key!r} is not a LoRA A/B weight of "
                                 f"{', '.join(_TARGETS)} (embeddings, lm_head, biases, DoRA are not supported)")
            layer, _, module, ab = int(match.group(1)), match.group(2), match.group(3), match.group(4)
            if layer >= model_config.num_layers:
                raise ValueError(f"{path}: tensor {key!r} is for layer {layer}, but the model has "
                                 f"{model_config.num_layers} layers")
            found.setdefault((layer, module, key.split(".lora_")[0]), {})[ab] = (
                f.get_tensor(key) if load else None, tuple(f.get_slice(key).get_shape()))
    if not found:
        raise ValueError(f"{path}: no LoRA weights in it")
    pairs: dict[tuple[int, str], dict[int, tuple]] = {}
    for (layer, module, prefix), ab in found.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{path}: {prefix} has lora_{''.join(ab)} but not both lora_A and lora_B")
        (a, a_shape), (b, b_shape) = ab["A"], ab["B"]
        fused, index = _TARGETS[module]
        in_features, outs = sizes[fused]
        rank = a_shape[0]
        module_key = prefix.removeprefix("base_model.model.")
        expected_rank = config.rank(module_key)
        if a_shape != (rank, in_features) or b_shape != (outs[index], rank) or rank != expected_rank:
            raise ValueError(
                f"{path}: {module_key} has lora_A {list(a_shape)} and lora_B {list(b_shape)}; the base model "
                f"needs lora_A [r, {in_features}] and lora_B [{outs[index]}, r] with r = {expected_rank} "
                f"(adapter_config r / rank_pattern)")
        if rank > max_rank:
            raise ValueError(f"{path}: {module_key} has rank {rank}, above max_lora_rank {max_rank}")
        pairs.setdefault((layer, fused), {})[index] = (a, b, config.scale(module_key, rank))
    return pairs
