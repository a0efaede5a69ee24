"""`polyhead train` and `polyhead eval` (also `python -m polyhead.train`, torchrun's entry)."""

import argparse
import os
import subprocess
import sys
from pathlib import Path


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the training config (YAML): backbone, tasks, train, sampling, weighting, distill")
    p.add_argument("--output-dir", default=None, help="where the run goes (default: the config's output_dir)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the output dir (same result as not stopping)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps, overriding train.steps / epochs")
    p.add_argument("--mode", choices=["heads", "lora", "full"], default=None, help="override train.mode")
    p.add_argument("--tasks", default=None, help="comma-separated task names to train (default: all of the config)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="override train.eval_every (0 = evaluate only at the end)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: torch's choice; 1 is fastest on a busy machine)")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine; >1 launches torchrun for you (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")


def add_parsers(commands) -> None:
    p = commands.add_parser("train", help="train tasks (heads / LoRA / full) on a shared backbone",
                            description="Multi-task training: per-task heads and LoRA adapters on one backbone, "
                            "with evaluation, checkpoints, loss curves and exported task packs "
                            "(<output-dir>/tasks.yaml, for `polyhead serve --tasks`).")
    add_train_arguments(p)
    p.set_defaults(func=train_command)
    p = commands.add_parser("eval", help="evaluate a training run's best checkpoint, per task",
                            description="Evaluate a run folder written by `polyhead train` on a split; prints the "
                            "per-task table and saves it as <run>/eval-<split>.json.")
    p.add_argument("run_dir", help="the run's output folder")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"],
                   help="which data split (default: test)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per forward (default: 32)")
    p.set_defaults(func=eval_command)


def load_config(args):
    from polyhead.train.config import TrainConfig

    config = TrainConfig.from_yaml(args.config)
    if args.output_dir is not None:
        config.output_dir = str(Path(args.output_dir).resolve())
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        config.train.steps, config.train.epochs = args.steps, None
    if args.mode is not None:
        config.train.mode = args.mode
    if args.eval_every is not None:
        config.train.eval_every = args.eval_every
    if args.tasks:
        wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = sorted(set(wanted) - {t.name for t in config.tasks})
        if unknown:
            raise ValueError(f"--tasks names unknown tasks {unknown}; the config has {[t.name for t in config.tasks]}")
        config.tasks = [t for t in config.tasks if t.name in wanted]
        config.weighting.weights = {k: v for k, v in config.weighting.weights.items() if k in wanted}
        if config.distill is not None:
            config.distill.tasks = [t for t in config.distill.tasks if t in wanted]
    config.validate()
    return config


def train_command(args) -> int:
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return launch_torchrun(args)
    from polyhead.train.distributed import init_distributed, shutdown_distributed
    from polyhead.train.trainer import Trainer, TrainingInterrupted

    config = load_config(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    ctx = init_distributed()
    try:
        Trainer(config, resume=args.resume, ctx=ctx, show_progress=not args.no_progress).train()
    except TrainingInterrupted as err:
        if ctx.is_main:
            print(f"polyhead: {err}", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed(ctx)
    if ctx.is_main:
        print(f"run: {config.output_dir}  (serve it: polyhead serve --tasks {Path(config.output_dir) / 'tasks.yaml'})")
    return 0


def launch_torchrun(args) -> int:
    """Re-run this command under torchrun with --nproc processes (a free local port, gloo on CPU).
    torchrun's agent watches the ranks: when one dies, it stops the others and reports which rank
    failed and how (exit code or signal); the survivors' collectives fail at once on the closed
    connection, so nothing waits for the process group's timeout."""
    argv = [a for a in sys.argv[1:] if a != "train"] if sys.argv[1:2] == ["train"] else sys.argv[1:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "polyhead.train", *_strip_nproc(argv)]
    status = subprocess.call(cmd)
    if status != 0:
        print(f"polyhead train: torchrun ended the run with exit status {status}: a rank failed or was stopped; "
              "torchrun's report above names it and its exit code or signal (\"Root Cause\")", file=sys.stderr)
    return status


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def eval_command(args) -> int:
    from transformers import AutoTokenizer

    from polyhead.train.data import load_datasets
    from polyhead.train.evaluate import evaluate, format_table, save_results
    from polyhead.train.run_files import load_run_config, load_run_model, run_checkpoint

    config = load_run_config(args.run_dir)
    model = load_run_model(args.run_dir)
    tokenizer = AutoTokenizer.from_pretrained(model.backbone_folder)
    datasets = load_datasets(config, tokenizer, splits=(args.split,))
    data = {task: splits[args.split] for task, splits in datasets.items() if args.split in splits}
    if not data:
        raise ValueError(f"no task of run {args.run_dir!r} has {args.split} data")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    results = evaluate(model, data, pad, args.batch_size)
    print(format_table(results, f"{args.split} ({run_checkpoint(args.run_dir).name})"))
    path = save_results(results, Path(args.run_dir) / f"eval-{args.split}.json", {"split": args.split})
    print(f"saved {path}")
    return 0
