"""The model polyhead trains: transformers' causal LM for the backbone's weights, one head per
task from polyhead.models.heads, and (mode lora) one PEFT LoRA adapter per task.

The backbone is the same Hugging Face folder the engine serves (a GGUF is converted once into
the cache), and the heads read the final-normed hidden states exactly as the engine's do, so a
head trained here scores the same numbers when the engine runs it (tests/train/test_model.py).
A task's adapter is a named PEFT adapter: `set_adapter(task)` before each single-task batch, and
`save_pretrained` of that adapter alone is the task pack's `adapter/` folder.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.models.heads import ClassifyHead, EmbedPooler, TagHead, pool_padded

MODES = ("heads", "lora", "full")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IGNORE_INDEX = -100  # labels to skip: padding, prompt tokens of a generate task


@dataclass
class TaskHeadConfig:
    name: str  # the task's name; its adapter and head are named after it
    kind: str  # classify | tag | generate | embed
    labels: list[str]  # classify: class names; tag: BIO tags; empty otherwise
    pooling: str = "last"  # classify/embed: how token states become one vector
    normalize: bool = True  # embed: L2-normalize
    temperature: float = 0.05  # embed: in-batch contrastive softmax temperature


@dataclass
class LoraSettings:
    r: int = 8  # rank
    alpha: float = 16.0  # scaling = alpha / r
    dropout: float = 0.0  # on the adapter's input
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS  # Hugging Face module names to adapt


@dataclass
class TaskOutput:
    loss: torch.Tensor  # [] this batch's mean loss (float32)
    logits: torch.Tensor | None  # classify [B, labels]; tag [B, T, labels]; generate [B, T, V]; None for embed
    embeddings: torch.Tensor | None = None  # embed: [2B, D] anchors then positives


def resolve_backbone_folder(backbone: str | None) -> Path:
    """A backbone name or path -> the Hugging Face folder both transformers and the engine load."""
    from polyhead.models.loader import gguf_to_hf_folder
    from polyhead.models.registry import resolve_model_path

    path = resolve_model_path(backbone)
    folder = gguf_to_hf_folder(path) if path.suffix == ".gguf" else path
    if not (folder / "config.json").is_file():
        raise ValueError(f"backbone {backbone!r}: {str(folder)!r} is not a Hugging Face folder (no config.json)")
    if "polyhead_quantization" in json.loads((folder / "config.json").read_text()):
        raise ValueError(f"backbone {backbone!r} is a `polyhead quantize` folder: training needs the float weights "
                         "(train on the model it was quantized from, then quantize the result)")
    return folder


class MultiTaskModel(nn.Module):
    def __init__(self, backbone_folder: str | Path, tasks: list[TaskHeadConfig], mode: str = "heads",
                 lora: LoraSettings | dict[str, LoraSettings] | None = None):
        super().__init__()
        from polyhead.compress.transformers_model import load_causal_lm

        if mode not in MODES:
            raise ValueError(f"train.mode must be one of {', '.join(MODES)}, got {mode!r}")
        names = [t.name for t in tasks]
        if not tasks or len(set(names)) != len(names):
            raise ValueError(f"tasks must be a non-empty list of unique names, got {names}")
        self.backbone_folder = Path(backbone_folder)
        self.mode = mode
        self.tasks = {t.name: t for t in tasks}
        lora = lora or LoraSettings()
        self.lora = lora if isinstance(lora, dict) else {name: lora for name in names}  # task -> settings
        lm = load_causal_lm(self.backbone_folder, torch.float32)  # a pruned folder's per-layer sizes too
        lm.config.use_cache = False
        lm.requires_grad_(mode == "full")
        hidden = lm.config.hidden_size
        self.heads = nn.ModuleDict({t.name: _make_head(t, hidden) for t in tasks if t.kind != "generate"})
        if mode == "lora":
            lm = self._add_adapters(lm, names)
        self.lm = lm  # a transformers causal LM, or a PeftModel around one
        # fixed now: PEFT later turns requires_grad off for inactive adapters, which stay trainable
        self._trainable = {name for name, param in self.named_parameters() if param.requires_grad}
        self._lora_params = [p for n, p in self.named_parameters() if "lora_" in n]

    def _add_adapters(self, lm, names: list[str]):
        from peft import LoraConfig, get_peft_model

        def config(name: str) -> LoraConfig:
            s = self.lora.get(name) or LoraSettings()
            return LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=list(s.targets),
                              bias="none")

        peft_model = get_peft_model(lm, config(names[0]), adapter_name=names[0])
        for name in names[1:]:
            peft_model.add_adapter(name, config(name))
        for pname, param in peft_model.named_parameters():  # every task's adapter is trainable
            param.requires_grad_("lora_" in pname)
        return peft_model

    @property
    def causal_lm(self):
        """The transformers model (LoRA layers, if any, are injected into it in place)."""
        return self.lm.get_base_model() if self.mode == "lora" else self.lm

    def use_task(self, task: str) -> None:
        """Route the next forward through `task`'s adapter (and only its adapter gets gradients)."""
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; tasks: {sorted(self.tasks)}")
        if self.mode == "lora" and self.lm.active_adapter != task:
            self.lm.set_adapter(task)
            # PEFT froze the other adapters; keep them trainable, so one step can hold several tasks'
            # forwards before its backward (they simply get no gradient from this batch)
            for param in self._lora_params:
                param.requires_grad_(True)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask: [B, T] right-padded -> [B, T, H] final-normed states
        grad = torch.is_grad_enabled() and self.mode != "heads"
        with torch.set_grad_enabled(grad):
            out = self.causal_lm.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state

    def forward(self, batches: list) -> list[TaskOutput]:
        """Single-task batches (polyhead.train.data.Batch) -> an output each. A step's batches go
        through one call, so DDP sees one forward per backward however many tasks the step mixes."""
        return [self.forward_task(b.task, b.input_ids, b.attention_mask, b.labels, b.positive_ids,
                                  b.positive_mask) for b in batches]

    def forward_task(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     labels: torch.Tensor | None = None, positive_ids: torch.Tensor | None = None,
                     positive_mask: torch.Tensor | None = None) -> TaskOutput:
        """One single-task batch -> loss (and logits for evaluation)."""
        self.use_task(task)
        spec = self.tasks[task]
        hidden = self.hidden_states(input_ids, attention_mask)
        if spec.kind == "classify":
            logits = self.heads[task](pool_padded(hidden, attention_mask, spec.pooling))  # [B, C]
            return TaskOutput(_ce(logits, labels), logits)
        if spec.kind == "tag":
            logits = self.heads[task](hidden)  # [B, T, C]
            return TaskOutput(_ce(logits.flatten(0, 1), None if labels is None else labels.flatten()), logits)
        if spec.kind == "generate":
            logits = self.causal_lm.lm_head(hidden).float()  # [B, T, V]
            # the token at t predicts t+1; labels mark response tokens only (prompt = IGNORE_INDEX)
            loss = None if labels is None else _ce(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
            return TaskOutput(loss, logits)
        if positive_ids is None:
            raise ValueError(f"embed task {task!r}: a batch needs positive_ids (the positives)")
        positive_hidden = self.hidden_states(positive_ids, positive_mask)
        anchors = self.heads[task](pool_padded(hidden, attention_mask, spec.pooling))  # [B, D]
        positives = self.heads[task](pool_padded(positive_hidden, positive_mask, spec.pooling))  # [B, D]
        return TaskOutput(contrastive_loss(anchors, positives, spec.temperature), None,
                          torch.cat([anchors, positives]))

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The last decoder layer's trainable weights (GradNorm measures task gradients there)."""
        layer = self.causal_lm.model.layers[-1]
        names = self.trainable_names()
        prefix = {id(p): n for n, p in self.named_parameters()}
        return [p for p in layer.parameters() if prefix.get(id(p)) in names]

    def parameter_counts(self) -> dict[str, int]:
        """Total and trainable parameters (tied weights counted once)."""
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        trainable = sum(p.numel() for p in self.trainable_parameters())
        return {"total": total, "trainable": trainable}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes: heads, adapters (mode lora), or everything (mode full)."""
        names = self.trainable_names()
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in names}

    def trainable_names(self) -> set[str]:
        return set(self._trainable)

    def trainable_parameters(self) -> list[nn.Parameter]:
        names = self.trainable_names()
        return [param for name, param in self.named_parameters() if name in names]

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = self.trainable_names() - set(state)
        unexpected = set(state) - set(self.state_dict())
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit this model: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]} (same config and mode?)")
        self.load_state_dict(state, strict=False)

    def save_adapter(self, task: str, folder: str | Path) -> Path:
        """Write `task`'s LoRA adapter in PEFT format (adapter_config.json + adapter_model.safetensors)."""
        import shutil
        import tempfile

        if self.mode != "lora":
            raise ValueError(f"task {task!r} has no adapter: train.mode is {self.mode!r}, not 'lora'")
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".adapter-"))
        try:  # PEFT writes a named adapter into <dir>/<name>; that subfolder becomes `folder`
            self.lm.save_pretrained(str(staging), selected_adapters=[task])
            self.lm.peft_config[task].base_model_name_or_path = str(self.backbone_folder)
            shutil.rmtree(folder, ignore_errors=True)
            (staging / task).replace(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder


def _make_head(task: TaskHeadConfig, hidden: int) -> nn.Module:
    if task.kind == "classify":
        return ClassifyHead(hidden, len(task.labels), task.pooling)
    if task.kind == "tag":
        return TagHead(hidden, len(task.labels))
    if task.kind == "embed":  # a trainable projection, identity at the start, so heads-only mode learns too
        pooler = EmbedPooler(task.pooling, task.normalize, torch.eye(hidden))
        pooler.projection.requires_grad_(True)
        return pooler
    raise ValueError(f"task {task.name!r}: kind must be classify, tag, generate or embed, got {task.kind!r}")


def _ce(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    if labels is None:
        return None
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


def contrastive_loss(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch InfoNCE: each anchor's positive is the same row; the other rows are its negatives."""
    # anchors, positives: [B, D] (normalized when the task normalizes)
    scores = anchors @ positives.t() / temperature  # [B, B]
    return F.cross_entropy(scores, torch.arange(scores.shape[0], device=scores.device))
