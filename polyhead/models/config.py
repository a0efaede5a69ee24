"""The backbone's shape, read once from a Hugging Face config; the model code reads only this."""

from dataclasses import dataclass, field

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")


@dataclass(slots=True)
class ModelConfig:
    architecture: str  # Hugging Face model_type: one of SUPPORTED_ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (< num_heads: grouped-query attention)
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope_theta: float
    rope_scaling: dict = field(default_factory=dict)  # rope_type plus its parameters ("default": none)
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2)
    sliding_window: int | None = None  # attend to at most this many previous tokens (Mistral)
    eos_token_ids: tuple[int, ...] = ()
    # per layer, after structured pruning (polyhead/compress); empty: intermediate_size / num_heads everywhere
    intermediate_sizes: tuple[int, ...] = ()
    layer_num_heads: tuple[int, ...] = ()  # query heads per layer; each a multiple of num_kv_heads

    def __post_init__(self):
        check_architecture(self.architecture)
        self.intermediate_sizes = tuple(self.intermediate_sizes) or (self.intermediate_size,) * self.num_layers
        self.layer_num_heads = tuple(self.layer_num_heads) or (self.num_heads,) * self.num_layers
        for name in ("intermediate_sizes", "layer_num_heads"):
            values = getattr(self, name)
            if len(values) != self.num_layers or min(values) < 1:
                raise ValueError(f"{name} must hold one size >= 1 per layer ({self.num_layers}), got {list(values)}")
        for heads in {self.num_heads, *self.layer_num_heads}:
            if heads % self.num_kv_heads:
                raise ValueError(f"num_heads ({heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")

    @property
    def is_uniform(self) -> bool:
        """Every layer has the same sizes (a plain Hugging Face config describes it)."""
        return len(set(self.intermediate_sizes)) == 1 and len(set(self.layer_num_heads)) == 1

    @classmethod
    def from_hf(cls, hf) -> "ModelConfig":
        model_type = getattr(hf, "model_type", None)
        check_architecture(model_type)  # before reading fields other architectures lack
        rope = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
        rope_theta = rope.pop("rope_theta", getattr(hf, "rope_theta", 10000.0))
        rope.setdefault("rope_type", rope.pop("type", "default"))
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        sliding_window = getattr(hf, "sliding_window", None)
        if model_type == "qwen2" and not getattr(hf, "use_sliding_window", False):
            sliding_window = None
        num_kv_heads = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
        pruning = getattr(hf, "polyhead_pruning", None) or {}
        # Pruned folders keep the key/value heads of every layer (polyhead/compress/structured.py), so
        # the paged KV cache stays one [layers, 2, kv_heads, slots, head_dim] tensor.
        if any(n != num_kv_heads for n in pruning.get("num_kv_heads", ())):
            raise ValueError(f"polyhead_pruning.num_kv_heads must be num_key_value_heads ({num_kv_heads}) in "
                             f"every layer, got {pruning['num_kv_heads']}")
        eos = getattr(hf, "eos_token_id", None)
        eos_ids = tuple(eos) if isinstance(eos, list | tuple) else (() if eos is None else (eos,))
        return cls(
            architecture=model_type,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            rms_norm_eps=hf.rms_norm_eps,
            max_position_embeddings=hf.max_position_embeddings,
            rope_theta=float(rope_theta),
            rope_scaling=rope,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            attention_bias=model_type == "qwen2" or bool(getattr(hf, "attention_bias", False)),
            sliding_window=sliding_window,
            eos_token_ids=eos_ids,
            intermediate_sizes=tuple(pruning.get("intermediate_sizes", ())),
            layer_num_heads=tuple(pruning.get("num_heads", ())),
        )


def check_architecture(model_type: str | None) -> None:
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"model architecture {model_type!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
