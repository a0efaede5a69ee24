"""Per-task training settings: which data, which columns, labels, length, pooling, LoRA override.

The YAML format is documented in polyhead/train/config.py; errors name the field path.
"""

from dataclasses import dataclass, field

from polyhead.engine.core.kinds import TASK_KINDS
from polyhead.train.config_parse import path_error

POOLINGS = ("last", "mean", "cls")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass
class DataFiles:
    train: str  # required: JSONL / CSV file or a datasets save_to_disk folder
    validation: str | None = None  # evaluated every train.eval_every steps; best checkpoint by it
    test: str | None = None  # evaluated once at the end

    def splits(self) -> dict[str, str]:
        return {k: v for k, v in (("train", self.train), ("validation", self.validation),
                                  ("test", self.test)) if v is not None}


@dataclass
class LoraConfig:
    r: int = 8  # rank
    alpha: float = 16.0  # scaling is alpha / r
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # module names (PEFT)

    def validate(self, where: str):
        if self.r < 1:
            raise path_error(f"{where}.r", f"must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise path_error(f"{where}.alpha", f"must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise path_error(f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise path_error(f"{where}.targets", "must name at least one module")


@dataclass
class TaskConfig:
    name: str  # task name: letters, digits, - _ . (also the exported task pack's name)
    kind: str  # classify | tag | generate | embed
    data: DataFiles  # files per split
    text_column: str = "text"  # classify / embed (anchor)
    label_column: str = "label"  # classify: a label name (or an index into labels)
    tokens_column: str = "tokens"  # tag: list of words
    tags_column: str = "tags"  # tag: list of BIO tags, one per word
    prompt_column: str = "prompt"  # generate
    response_column: str = "response"  # generate: the loss is on these tokens only
    positive_column: str = "positive"  # embed: the text paired with text_column
    labels: list[str] = field(default_factory=list)  # classify: class names; tag: see module docstring
    max_length: int = 128  # tokens per example (embed: per side); longer inputs are truncated
    pooling: str = "last"  # classify / embed: last | mean | cls
    weight: float | None = None  # static loss weight; None = weighting.weights[name] or 1.0
    chat_template: bool | None = None  # generate: wrap the prompt in the tokenizer's chat template
    #                                     (None = when the tokenizer has one)
    prompt_template: str | None = None  # classify / embed: "{input}" replaced by the text (kept in the pack)
    lora: LoraConfig | None = None  # per-task LoRA settings (train.mode lora); None = train.lora

    def validate(self, where: str):
        if not self.name or not set(self.name) <= _NAME_CHARS:
            raise path_error(f"{where}.name", f"must be letters, digits, '-', '_' or '.', got {self.name!r}")
        if self.kind not in TASK_KINDS:
            raise path_error(f"{where}.kind", f"must be one of {', '.join(TASK_KINDS)}, got {self.kind!r}")
        if self.pooling not in POOLINGS:
            raise path_error(f"{where}.pooling", f"must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.max_length < 4:
            raise path_error(f"{where}.max_length", f"must be >= 4, got {self.max_length}")
        if self.weight is not None and self.weight < 0:
            raise path_error(f"{where}.weight", f"must be >= 0, got {self.weight}")
        if self.prompt_template is not None and "{input}" not in self.prompt_template:
            raise path_error(f"{where}.prompt_template", "must contain {input}")
        if self.prompt_template is not None and self.kind not in ("classify", "embed"):
            raise path_error(f"{where}.prompt_template", f"applies to classify and embed tasks, not {self.kind}")
        if not self.data.train:
            raise path_error(f"{where}.data.train", "is required")
        if self.lora is not None:
            self.lora.validate(f"{where}.lora")
        if self.kind in ("classify", "tag"):
            if not self.labels:
                raise path_error(f"{where}.labels", f"a {self.kind} task needs labels")
            if len(set(self.labels)) != len(self.labels):
                raise path_error(f"{where}.labels", f"must be unique, got {self.labels}")
            if any(not isinstance(label, str) or not label.strip() for label in self.labels):
                raise path_error(f"{where}.labels", f"must be non-empty strings, got {self.labels}")
            if self.kind == "tag":
                self.labels = bio_labels(self.labels, f"{where}.labels")
        elif self.labels:
            raise path_error(f"{where}.labels", f"a {self.kind} task takes no labels")

    @property
    def entity_types(self) -> list[str]:
        """tag: the entity types in label order (PER, ORG, ...)."""
        return [label[2:] for label in self.labels if label.startswith("B-")]


def bio_labels(labels: list[str], where: str) -> list[str]:
    """Entity types or a BIO tag list -> the full BIO list: O, B-X, I-X for each type X in order."""
    is_bio = [label == "O" or label[:2] in ("B-", "I-") for label in labels]
    if all(is_bio):
        types = list(dict.fromkeys(label[2:] for label in labels if label != "O"))
        expected = {"O"} | {f"{p}-{t}" for t in types for p in "BI"}
        if set(labels) != expected:
            missing = sorted(expected - set(labels))
            raise path_error(where, f"a BIO tag set needs O and both B- and I- of every type; missing {missing}")
    elif any(is_bio):
        mixed = [label for label, bio in zip(labels, is_bio) if bio]
        raise path_error(where, f"list entity types (PER, ORG) or full BIO tags, not both; got {mixed} among types")
    else:
        types = labels
    return ["O"] + [f"{p}-{t}" for t in types for p in "BI"]
