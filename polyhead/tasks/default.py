"""The manifest `polyhead serve --tasks default` loads (default.yaml beside this file)."""

from pathlib import Path

DEFAULT_MANIFEST = Path(__file__).with_name("default.yaml")


def resolve_manifest(name_or_path: str) -> Path:
    """`default` -> the shipped manifest; anything else is a path to a tasks.yaml."""
    if name_or_path == "default":
        return DEFAULT_MANIFEST
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ValueError(f"--tasks {name_or_path!r}: no such manifest file (or say `default` for the shipped one)")
    return path
