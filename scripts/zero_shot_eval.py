"""Zero-shot classification accuracy of prompt/tokenization variants on the example test splits.

    PYTHONPATH=. python scripts/zero_shot_eval.py [--limit N] [--variants a,b] [--tasks a,b]

Tasks: `sentiment` and `topic` from polyhead/tasks/default.yaml (few-shot prompt templates), and
the same labels and verbalizers without a template (`*-bare`: the default instruction). Data:
examples/data/{sentiment,topic}/test.jsonl (120 rows each). The default model in float32, every
variant scored through the engine (score rows, as LLM.classify and /v1/classify run them).

Variants (how one text becomes a prompt and each label's answer tokens):
  chat-label  the instruction in the chat template as the user's turn, the reply opened with
              "Label:", each verbalizer tokenized as it follows the prompt (LLM.classify until 2026-12)
  raw-alone   the rendered template as written, each verbalizer tokenized on its own
              (/v1/classify until 2026-12; a bare task's prompt is the text alone)
  raw-cont    the template as written (bare: the default instruction and "Label:"), each
              verbalizer tokenized as it follows the prompt (polyhead.tasks.zero_shot.build_plan:
              what both use since 2026-12)
  chat-reply  the chat template, the reply being the verbalizer itself ("positive", no prefix)
"""

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from polyhead.config import EngineConfig
from polyhead.engine.factory import build_engine
from polyhead.tasks import zero_shot
from polyhead.tasks.default import DEFAULT_MANIFEST
from polyhead.tasks.manifest import load_manifest
from polyhead.tasks.spec import TaskSpec
from polyhead.tasks.zero_shot import ANSWER_PREFIX, DEFAULT_INSTRUCTION, ZeroShotPlan

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"
DATASET_LABELS = {"science": "science_tech"}  # examples/data/topic says science; the default task science_tech


def instruction(spec: TaskSpec, text: str) -> str:
    labels = ", ".join(spec.verbalizer(label).strip() for label in spec.labels)
    return spec.render(text) if spec.prompt_template is not None else DEFAULT_INSTRUCTION.format(labels=labels,
                                                                                                  input=text)


def chat(tokenizer, content: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def continuation(tokenizer, prefix: str, answer: str) -> list[int]:
    """The tokens `answer` adds after `prefix` in their joint tokenization (else its own)."""
    prefix_ids, joint = encode(tokenizer, prefix), encode(tokenizer, prefix + answer)
    return joint[len(prefix_ids):] if joint[: len(prefix_ids)] == prefix_ids else encode(tokenizer, answer)


def plan_from(spec: TaskSpec, tokenizer, prefix: str, answers: list[str], alone: bool = False) -> ZeroShotPlan:
    conts = [encode(tokenizer, a) if alone else continuation(tokenizer, prefix, a) for a in answers]
    return ZeroShotPlan(spec.name, list(spec.labels), encode(tokenizer, prefix), conts)


def chat_label(spec, tokenizer, text):
    prefix = chat(tokenizer, instruction(spec, text)) + ANSWER_PREFIX
    return plan_from(spec, tokenizer, prefix, [" " + spec.verbalizer(lb).strip() for lb in spec.labels])


def raw_alone(spec, tokenizer, text):
    return plan_from(spec, tokenizer, spec.render(text), [spec.verbalizer(lb) for lb in spec.labels], alone=True)


def chat_reply(spec, tokenizer, text):
    prefix = chat(tokenizer, instruction(spec, text))
    return plan_from(spec, tokenizer, prefix, [spec.verbalizer(lb).strip() for lb in spec.labels])


VARIANTS = {"chat-label": chat_label, "raw-alone": raw_alone, "raw-cont": zero_shot.build_plan,
            "chat-reply": chat_reply}


def load_tasks() -> dict[str, tuple[TaskSpec, str]]:
    """name -> (spec, dataset folder)."""
    specs = {s.name: s for s in load_manifest(DEFAULT_MANIFEST) if s.kind == "classify"}
    tasks = {}
    for name in ("sentiment", "topic"):
        tasks[name] = (specs[name], name)
        tasks[f"{name}-bare"] = (dataclasses.replace(specs[name], name=f"{name}-bare", prompt_template=None), name)
    return tasks


def read_rows(dataset: str, limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / dataset / "test.jsonl").read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each test split (default: all)")
    parser.add_argument("--variants", default="chat-label,raw-alone,raw-cont,chat-reply")
    parser.add_argument("--tasks", default="sentiment,topic,sentiment-bare,topic-bare")
    args = parser.parse_args()
    torch.manual_seed(0)  # nothing is sampled; kept so a future sampled variant stays reproducible
    torch.set_num_threads(max(1, torch.get_num_threads()))
    engine = build_engine(EngineConfig(dtype="float32", kv_cache_memory="256MiB"))
    tasks = load_tasks()
    variants = args.variants.split(",")
    table: dict[str, dict[str, float]] = {}
    for task in args.tasks.split(","):
        spec, dataset = tasks[task]
        rows = read_rows(dataset, args.limit)
        gold = [DATASET_LABELS.get(r["label"], r["label"]) for r in rows]
        for variant in variants:
            start = time.monotonic()
            plans = [VARIANTS[variant](spec, engine.tokenizer, r["text"]) for r in rows]
            probs = zero_shot.classify(engine, plans)
            correct = sum(max(p, key=p.get) == g for p, g in zip(probs, gold))
            table.setdefault(task, {})[variant] = correct / len(rows)
            print(f"# {task} {variant}: {correct}/{len(rows)} in {time.monotonic() - start:.1f} s",
                  file=sys.stderr, flush=True)
    print("command: PYTHONPATH=. python " + shlex.join(["scripts/zero_shot_eval.py", *sys.argv[1:]]))
    print(f"rows per task: {args.limit or 'all (120)'}; model: SmolLM2-135M-Instruct float32")
    print("| task | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for task, accuracy in table.items():
        print(f"| {task} | " + " | ".join(f"{accuracy[v]:.3f}" for v in variants) + " |")
    means = [sum(accuracy[v] for accuracy in table.values()) / len(table) for v in variants]
    print("| mean | " + " | ".join(f"{m:.3f}" for m in means) + " |")


if __name__ == "__main__":
    main()
