"""Row readers for training data: JSONL, CSV and `datasets` save_to_disk folders, read lazily.

`read_rows(path, split)` yields `(where, row)` one row at a time: `where` names the file and line
(`data/train.jsonl:17`, `data/train.csv:4`, `data/ds:row 9`) for error messages; `row` is a dict.
No reader holds the whole file: JSONL and CSV stream lines, a datasets folder is memory-mapped Arrow.

Formats:
- `.jsonl` / `.json` (one JSON object per line; blank lines are skipped).
- `.csv` / `.tsv` with a header row. A list column (tag tokens/tags) is a JSON list (`["a", "b"]`)
  or space-separated words.
- a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (a DatasetDict: the split
  whose name is the split being read). ClassLabel ints come back as their names.
"""

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path


class DataError(ValueError):
    """A malformed row or file: the message names the file and line."""


def data_format(path: str | Path) -> str:
    path = Path(path)
    if path.is_dir():
        return "datasets"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise DataError(f"{str(path)!r}: unknown data format {suffix!r}; use .jsonl, .csv or a datasets folder")


def read_rows(path: str | Path, split: str = "train") -> Iterator[tuple[str, dict]]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{str(path)!r}: no such data file ({split} split)")
    fmt = data_format(path)
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt == "csv":
        return _read_csv(path)
    return _read_datasets(path, split)


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with path.open(encoding="utf-8-sig") as f:  # -sig: a leading byte-order mark is not data
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            if line.lstrip().startswith("["):
                raise DataError(f"{where}: a JSON array; polyhead reads JSON Lines (one object per line)")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: bad JSON: {err.msg} at column {err.colno}") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
            yield where, row


def _read_csv(path: Path) -> Iterator[tuple[str, dict]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None:
            raise DataError(f"{path}:1: empty CSV file (a header row is needed)")
        start = 2  # the first data row's line (the header is line 1)
        for row in reader:
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if None in row:
                raise DataError(f"{where}: more fields than the header's {len(reader.fieldnames)}")
            if any(v is None for v in row.values()):
                missing = [k for k, v in row.items() if v is None]
                raise DataError(f"{where}: too few fields; missing {missing}")
            yield where, row


def _read_datasets(path: Path, split: str) -> Iterator[tuple[str, dict]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - datasets raises several types for a bad folder
        raise DataError(f"{str(path)!r}: not a datasets save_to_disk folder: {err}") from None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{str(path)!r}: DatasetDict has splits {sorted(ds)}, not {split!r}")
        ds = ds[split]
    names = _class_label_names(ds.features)
    for i, row in enumerate(ds):
        for column, to_name in names.items():
            if column in row and row[column] is not None:
                row[column] = to_name(row[column])
        yield f"{path}:row {i}", row


def _class_label_names(features) -> dict:
    """column -> function mapping a ClassLabel int (or a list of them) to its name(s)."""
    from datasets import ClassLabel, List, Sequence

    out = {}
    for column, feature in features.items():
        if isinstance(feature, ClassLabel):
            out[column] = lambda v, f=feature: f.int2str(v) if isinstance(v, int) else v
        elif isinstance(feature, (Sequence, List)) and isinstance(feature.feature, ClassLabel):
            out[column] = lambda vs, f=feature.feature: [f.int2str(v) if isinstance(v, int) else v for v in vs]
    return out


def content_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (names and bytes, sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
