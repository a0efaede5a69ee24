"""Task manifests (`tasks.yaml`) and task-pack folders -> TaskSpecs. Format: polyhead/tasks/spec.py."""

from pathlib import Path

import yaml

from polyhead.tasks.spec import TaskSpec

PACK_FILE = "task.yaml"


def load_pack(folder: str | Path) -> TaskSpec:
    folder = Path(folder)
    path = folder / PACK_FILE
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} is not a task pack: no {PACK_FILE}")
    spec = TaskSpec.from_dict(_read_yaml(path), base_dir=folder)
    _check_files(spec, path)
    return spec


def save_pack(spec: TaskSpec, folder: str | Path) -> Path:
    """Write task.yaml into a folder that already holds head.safetensors / adapter/ as named by spec."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (PACK_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(spec.to_dict(relative_to=folder), sort_keys=False))
    tmp.replace(folder / PACK_FILE)
    return folder


def load_manifest(path: str | Path) -> list[TaskSpec]:
    """Tasks from a manifest; relative paths resolve against the manifest's folder."""
    path = Path(path)
    data = _read_yaml(path)
    entries = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{str(path)!r}: a manifest needs a non-empty `tasks:` list")
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{str(path)!r}: tasks[{i}] must be a mapping, got {entry!r}")  # noqa: TRY004 - a config error
        try:
            if "pack" in entry:
                pack = Path(entry["pack"])
                spec = load_pack(pack if pack.is_absolute() else path.parent / pack)
            else:
                spec = TaskSpec.from_dict(entry, base_dir=path.parent)
                _check_files(spec, path)
        except ValueError as err:
            raise ValueError(f"{str(path)!r}: tasks[{i}]: {err}") from None
        specs.append(spec)
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{str(path)!r}: task names must be unique, repeated: {duplicates}")
    return specs


def save_manifest(specs: list[TaskSpec], path: str | Path, packs: dict[str, Path] | None = None) -> Path:
    """Write a manifest; tasks named in `packs` are listed by their pack folder (relative when possible)."""
    path = Path(path)
    packs = packs or {}
    entries = []
    for spec in specs:
        if spec.name in packs:
            pack = Path(packs[spec.name]).resolve()
            try:
                pack = pack.relative_to(path.parent.resolve())
            except ValueError:
                pass
            entries.append({"pack": str(pack)})
        else:
            entries.append(spec.to_dict())
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump({"tasks": entries}, sort_keys=False))
    tmp.replace(path)
    return path


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{str(path)!r} is not valid YAML: {err}") from None


def _check_files(spec: TaskSpec, source: Path) -> None:
    if spec.head is not None and not Path(spec.head).is_file():
        raise ValueError(f"task {spec.name!r} in {str(source)!r}: head file {spec.head!r} not found")
    if spec.adapter is not None and not (Path(spec.adapter) / "adapter_config.json").is_file():
        raise ValueError(f"task {spec.name!r} in {str(source)!r}: adapter folder {spec.adapter!r} "
                         "has no adapter_config.json (PEFT format)")
