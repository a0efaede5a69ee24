"""Markdown table of the runs written by scripts/train_evidence.sh: per task, its test metrics in
each run that trained it, with the run's wall time and parameter counts.
Usage: python scripts/train_evidence_table.py OUT_DIR"""

import json
import re
import sys
from pathlib import Path

PRIMARY = {"classify": ("accuracy", "macro_f1"), "tag": ("span_f1", "token_accuracy")}


def main(out: Path) -> None:
    walls = {}
    for line in [*(out / "walltimes.txt").read_text().splitlines(),
                 *((out / "walltimes-extra.txt").read_text().splitlines()
                   if (out / "walltimes-extra.txt").is_file() else [])]:
        name, wall = line.split()
        walls[name] = int(wall.split("=")[1])
    print("| run | mode | tasks | task | test metrics | trainable / total params | steps | train s | total s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for results in sorted(out.glob("*/results.json"), key=lambda p: (p.parent.name.split("-")[0],
                                                                     "+" in p.parent.name, p.parent.name)):
        name = results.parent.name
        data = json.loads(results.read_text())
        mode, tasks = re.match(r"(\w+)-(.*)", name).groups()
        params = f"{data['parameters']['trainable']:,} / {data['parameters']['total']:,}"
        for task, metrics in data["splits"]["test"].items():
            shown = ", ".join(f"{m} {metrics[m]:.3f}" for m in PRIMARY[metrics["kind"]])
            print(f"| {name} | {mode} | {'all' if '+' in tasks else 'alone'} | {task} | {shown} | {params} | "
                  f"{data['steps']} | {data['wall_s']:.0f} | {walls.get(name, '')} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
