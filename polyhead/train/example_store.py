"""Examples <-> a few flat tensors, the on-disk form of the tokenized-data cache (data.py).

Each list field is stored as one flat int tensor plus per-example lengths, so saving and loading
thousands of examples is a handful of tensor reads (the safe `torch.load(weights_only=True)`
unpickles a list of small Python objects ~20x slower).
"""

import torch

from polyhead.train.encode import Example

_LIST_FIELDS = ("input_ids", "positive_ids", "word_ids")


def _flat(rows: list[list[int]]) -> dict:
    return {"values": torch.tensor([v for r in rows for v in r], dtype=torch.int64),
            "lengths": torch.tensor([len(r) for r in rows], dtype=torch.int64)}


def _split(stored: dict) -> list[list[int]]:
    return [part.tolist() for part in torch.split(stored["values"], stored["lengths"].tolist())]


def pack_examples(examples: list[Example]) -> dict:
    packed = {"count": len(examples)}
    for name in _LIST_FIELDS:
        values = [getattr(e, name) for e in examples]
        packed[name] = None if all(v is None for v in values) else _flat([v or [] for v in values])
    labels = [e.labels for e in examples]
    if all(isinstance(v, int) for v in labels):
        packed["labels"] = {"kind": "int", "values": torch.tensor(labels, dtype=torch.int64)}
    elif all(isinstance(v, list) for v in labels):
        packed["labels"] = {"kind": "list", **_flat(labels)}
    elif all(v is None for v in labels):
        packed["labels"] = {"kind": "none"}
    else:
        raise ValueError("examples of one dataset must share a label form")
    spans = [[c for span in e.word_spans for c in span] for e in examples]
    packed["word_spans"] = _flat(spans)
    return packed


def unpack_examples(packed: dict) -> list[Example]:
    count = packed["count"]
    columns = {name: (_split(packed[name]) if packed[name] is not None else [None] * count)
               for name in _LIST_FIELDS}
    labels = packed["labels"]
    if labels["kind"] == "int":
        label_column = labels["values"].tolist()
    elif labels["kind"] == "list":
        label_column = _split(labels)
    else:
        label_column = [None] * count
    spans = [list(zip(flat[0::2], flat[1::2])) for flat in _split(packed["word_spans"])]
    return [Example(input_ids=columns["input_ids"][i], labels=label_column[i],
                    positive_ids=columns["positive_ids"][i], word_spans=spans[i],
                    word_ids=columns["word_ids"][i] or []) for i in range(count)]
