"""What `polyhead prune` is asked to do, parsed from its flags; errors name the flag and the limit."""

from dataclasses import dataclass

METHODS = ("magnitude", "wanda")
ALLOCATIONS = ("uniform", "global")


@dataclass(slots=True)
class PruneSpec:
    method: str  # magnitude: weight norms | wanda: |W| * input activation L2 norm (calibration text)
    mlp: float = 0.0  # structured: fraction of MLP channels (intermediate) removed
    heads: float = 0.0  # structured: fraction of query heads removed, the same count in every GQA group
    allocation: str = "uniform"  # structured: uniform = the ratio in every layer | global = scores decide
    unstructured: float = 0.0  # fraction of each linear's weights zeroed, per output row (dense shapes)
    n_m: tuple[int, int] | None = None  # semi-structured: n zeros in every m consecutive input weights

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"--allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        for name, flag in (("mlp", "--structured mlp"), ("heads", "--structured heads"),
                           ("unstructured", "--unstructured")):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{flag} must be in [0, 1), got {value}")
        modes = [self.is_structured, self.unstructured > 0, self.n_m is not None]
        if sum(modes) != 1:
            raise ValueError("give exactly one of --structured (with mlp or heads > 0), --unstructured, "
                             "--semi-structured")
        if self.n_m is not None and not 0 < self.n_m[0] < self.n_m[1]:
            raise ValueError(f"--semi-structured N:M needs 0 < N < M, got {self.n_m[0]}:{self.n_m[1]}")

    @property
    def is_structured(self) -> bool:
        return self.mlp > 0 or self.heads > 0

    @property
    def mode(self) -> str:
        if self.is_structured:
            return "structured"
        return "unstructured" if self.unstructured > 0 else "semi-structured"


def parse_structured(text: str | None) -> dict[str, float]:
    """"mlp=0.25,heads=0.25" -> {"mlp": 0.25, "heads": 0.25}."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ("mlp", "heads"):
            raise ValueError(f"--structured takes mlp=R and/or heads=R separated by commas "
                             f"(e.g. mlp=0.25,heads=0.25), got {item!r}")
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"--structured {key}: {value!r} is not a number") from None
    return out


def parse_n_m(text: str | None) -> tuple[int, int] | None:
    """"2:4" -> (2, 4)."""
    if text is None:
        return None
    n, sep, m = text.partition(":")
    if not sep or not n.strip().isdigit() or not m.strip().isdigit():
        raise ValueError(f"--semi-structured takes N:M (e.g. 2:4), got {text!r}")
    return int(n), int(m)
