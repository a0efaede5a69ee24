"""Export a trained run as task packs plus the `tasks.yaml` manifest `polyhead serve --tasks` loads.

    <run>/packs/<task>/task.yaml           TaskSpec (polyhead/tasks/spec.py), paths relative to the pack
    <run>/packs/<task>/head.safetensors    classify/tag: weight [labels, hidden], bias [labels];
                                           embed: the projection weight [dim, hidden]
    <run>/packs/<task>/adapter/            mode lora: the task's adapter in PEFT format
    <run>/tasks.yaml                       {tasks: [{pack: packs/<task>}, ...]}
    <run>/backbone/                        mode full: the trained backbone, a Hugging Face folder the
                                           packs name as their backbone (a pruned student keeps its
                                           per-layer sizes, so polyhead's loader reads it back)

Each pack is built in a staging folder and renamed into place, so a reader never sees half a pack.
"""

import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from polyhead.models.heads import save_head
from polyhead.tasks.manifest import save_manifest, save_pack
from polyhead.tasks.spec import TaskSpec
from polyhead.train.model import MultiTaskModel

PACKS_DIR = "packs"
MANIFEST = "tasks.yaml"
BACKBONE_DIR = "backbone"


def export_run(model: MultiTaskModel, run_dir: str | Path, backbone: str | None,
               prompt_templates: dict[str, str | None] | None = None) -> Path:
    """Write every task's pack and the manifest; returns the manifest's path."""
    run_dir = Path(run_dir)
    if model.mode == "full":
        backbone = str(export_backbone(model, run_dir))
    packs_root = run_dir / PACKS_DIR
    packs_root.mkdir(parents=True, exist_ok=True)
    specs, packs = [], {}
    for name in model.tasks:
        spec = export_task(model, name, packs_root, backbone, (prompt_templates or {}).get(name))
        specs.append(spec)
        packs[name] = packs_root / name
    return save_manifest(specs, run_dir / MANIFEST, packs=packs)


def export_backbone(model: MultiTaskModel, run_dir: Path) -> Path:
    """The trained causal LM as a Hugging Face folder, with the source folder's tokenizer files."""
    target = run_dir / BACKBONE_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{BACKBONE_DIR}-"))
    try:
        model.causal_lm.save_pretrained(staging)
        for item in model.backbone_folder.iterdir():
            if item.is_file() and ".safetensors" not in item.name and not (staging / item.name).exists():
                shutil.copy2(item, staging / item.name)
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def export_task(model: MultiTaskModel, name: str, packs_root: Path, backbone: str | None,
                prompt_template: str | None = None) -> TaskSpec:
    task = model.tasks[name]
    staging = Path(tempfile.mkdtemp(dir=packs_root, prefix=f".{name}-"))
    try:
        head = adapter = None
        if task.kind in ("classify", "tag"):
            head = str(save_head(model.heads[name], staging / "head.safetensors"))
        elif task.kind == "embed":
            projection = model.heads[name].projection.detach().float().contiguous()  # [D, H]
            save_file({"weight": projection}, str(staging / "head.safetensors"))
            head = str(staging / "head.safetensors")
        if model.mode == "lora":
            adapter = str(model.save_adapter(name, staging / "adapter"))
        spec = TaskSpec(name=name, kind=task.kind, backbone=backbone, adapter=adapter, head=head,
                        labels=list(task.labels), pooling=task.pooling,
                        normalize=task.kind == "embed" and task.normalize,
                        prompt_template=prompt_template if task.kind in ("classify", "embed") else None,
                        description=f"trained by polyhead train (mode {model.mode})")
        save_pack(spec, staging)
        target = packs_root / name
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return spec
