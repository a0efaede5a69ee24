"""Multi-task training data: a tokenized `TaskDataset` per task and split, cached; `collate` -> `Batch`.

    datasets = load_datasets(config, tokenizer)          # {task: {split: TaskDataset}}
    ds = TaskDataset.load(task, "train", tokenizer, cache_dir)
    ds[i] -> Example (encode.py: input_ids, labels, positive_ids, word spans)
    batch = collate([ds[i] for i in idx], pad_token_id, task=task.name)

Rows are read lazily (readers.py) and tokenized once (encode.py); the examples are cached in
`<cache_dir>/<task>-<split>-<key>.pt` (flat tensors, example_store.py), key = sha256 of (the file's
content hash, the tokenizer's fingerprint, the task settings that change tokenization, whether the
tokenizer's specials wrap texts, the format version). A second load with
the same key reads the cache (`ds.num_tokenized == 0`); editing the file, the tokenizer or those
settings changes the key. Writes are atomic (temp file + rename), so DDP ranks that build the same
cache at once cannot corrupt it.

Batching over tasks and ranks is in batching.py (`TaskBatchIterator`, `MultiTaskBatches`): every
rank sees a disjoint shard of each task's examples, so the trainer needs no DistributedSampler.
"""

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from polyhead.train.config import TaskConfig, TrainConfig
from polyhead.train.encode import IGNORE_INDEX, Example, encode_row
from polyhead.train.example_store import pack_examples, unpack_examples
from polyhead.train.readers import DataError, content_hash, read_rows

logger = logging.getLogger(__name__)
CACHE_VERSION = 3  # bump when encode.py's output changes for the same inputs
_ENCODE_FIELDS = ("kind", "text_column", "label_column", "tokens_column", "tags_column", "prompt_column",
                  "response_column", "positive_column", "labels", "max_length", "chat_template", "prompt_template")

__all__ = ["IGNORE_INDEX", "Batch", "DataError", "Example", "TaskDataset", "collate", "default_cache_dir",
           "load_datasets", "uses_special_tokens"]


@dataclass
class Batch:
    task: str  # the task every row belongs to
    input_ids: torch.Tensor  # [B, T] int64, right-padded with pad_token_id
    attention_mask: torch.Tensor  # [B, T] int64, 1 = real token
    labels: torch.Tensor | None  # classify: [B]; tag / generate: [B, T] (-100 = no loss); embed: None
    positive_ids: torch.Tensor | None = None  # embed: [B, Tp] the positives, right-padded
    positive_mask: torch.Tensor | None = None  # embed: [B, Tp]

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "Batch":
        move = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return Batch(**move)


def _pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad -> ([B, T] ids, [B, T] mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def collate(examples: list[Example], pad_token_id: int, task: str = "") -> Batch:
    """Examples of one task -> a right-padded Batch."""
    if not examples:
        raise ValueError("collate needs at least one example")
    input_ids, attention_mask = _pad([e.input_ids for e in examples], pad_token_id)
    first = examples[0].labels
    positive_ids = positive_mask = None
    if isinstance(first, int):
        labels = torch.tensor([e.labels for e in examples], dtype=torch.long)
    elif isinstance(first, list):
        labels, _ = _pad([e.labels for e in examples], IGNORE_INDEX)
    else:
        labels = None
    if examples[0].positive_ids is not None:
        positive_ids, positive_mask = _pad([e.positive_ids for e in examples], pad_token_id)
    return Batch(task, input_ids, attention_mask, labels, positive_ids, positive_mask)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides token ids: the tokenizer's serialized model, specials and chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # truncation / padding are whatever the last call set, not the vocabulary: serialize without them
        truncation, padding = backend.truncation, backend.padding
        backend.no_truncation()
        backend.no_padding()
        try:
            digest.update(backend.to_str().encode())
        finally:
            if truncation is not None:
                backend.enable_truncation(**truncation)
            if padding is not None:
                backend.enable_padding(**padding)
    else:
        digest.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(repr((tokenizer.chat_template, tokenizer.eos_token_id, tokenizer.bos_token_id,
                        tokenizer.all_special_tokens)).encode())
    return digest.hexdigest()


def uses_special_tokens(tokenizer) -> bool:
    """Encoder tokenizers (a [CLS] token) wrap texts in their specials, as the encoder engine does;
    decoder tokenizers do not, as polyhead's LLM engine does not."""
    return getattr(tokenizer, "cls_token", None) is not None


def default_cache_dir() -> Path:
    """~/.cache/polyhead/train-data (or $POLYHEAD_CACHE/train-data); a run uses <output_dir>/data-cache."""
    root = os.environ.get("POLYHEAD_CACHE") or Path.home() / ".cache" / "polyhead"
    return Path(root) / "train-data"


class TaskDataset(Dataset):
    """One task's split, tokenized: a list of Examples. Build with `TaskDataset.load`."""

    def __init__(self, task: TaskConfig, split: str, examples: list[Example], num_tokenized: int = 0):
        self.task = task  # the task's config
        self.split = split  # train | validation | test
        self.examples = examples
        self.num_tokenized = num_tokenized  # rows tokenized by this load (0 = read from the cache)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    @classmethod
    def load(cls, task: TaskConfig, split: str, tokenizer, cache_dir: str | Path | None = None,
             fingerprint: str | None = None) -> "TaskDataset":
        """Read and tokenize `task.data.<split>`, or read the cache; cache_dir None = default_cache_dir()."""
        path = task.data.splits().get(split)
        if path is None:
            raise ValueError(f"task {task.name!r} has no {split} data")
        if not Path(path).exists():
            raise DataError(f"{path!r}: no such data file (task {task.name!r}, {split} split)")
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        specials = uses_special_tokens(tokenizer)
        settings = {name: getattr(task, name) for name in _ENCODE_FIELDS} | {"specials": specials}
        key = hashlib.sha256(json.dumps([CACHE_VERSION, split, content_hash(path),
                                         fingerprint or tokenizer_fingerprint(tokenizer), settings],
                                        sort_keys=True).encode()).hexdigest()[:24]
        cache_file = cache_dir / f"{task.name}-{split}-{key}.pt"
        if cache_file.is_file():
            try:
                stored = torch.load(cache_file, weights_only=True)
                return cls(task, split, unpack_examples(stored), num_tokenized=0)
            except Exception as err:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
                logger.warning("rebuilding the damaged data cache %s: %s", cache_file, err)
        examples = [encode_row(task, tokenizer, row, where, specials) for where, row in read_rows(path, split)]
        if not examples:
            raise DataError(f"{path!r}: no rows (task {task.name!r}, {split} split)")
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        torch.save(pack_examples(examples), tmp)
        tmp.replace(cache_file)
        return cls(task, split, examples, num_tokenized=len(examples))


def load_datasets(config: TrainConfig, tokenizer, splits: tuple[str, ...] = ("train", "validation", "test"),
                  cache_dir: str | Path | None = None) -> dict[str, dict[str, TaskDataset]]:
    """{task name: {split: TaskDataset}} for the splits each task has; cache under <output_dir>/data-cache."""
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(config.output_dir) / "data-cache"
    fingerprint = tokenizer_fingerprint(tokenizer)
    out = {}
    for task in config.tasks:
        available = task.data.splits()
        out[task.name] = {split: TaskDataset.load(task, split, tokenizer, cache_dir, fingerprint)
                          for split in splits if split in available}
    return out
