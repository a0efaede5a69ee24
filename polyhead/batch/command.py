"""`polyhead batch INPUT.jsonl OUTPUT.jsonl`: an OpenAI Batch API file through one engine at full batch.

The server's app is built as `polyhead serve` builds it, without a socket, and every line is posted to
it in-process (polyhead/batch/runner.py). Resumable: the output is appended to, and a rerun skips the
lines whose custom_id (or, for a line without one, line number) it already holds; each output line is
flushed when written, so a killed run loses only the lines it had not written.
"""

import asyncio
import json
import sys
import time
from pathlib import Path

from polyhead.batch.lines import keys_written, read_lines
from polyhead.batch.runner import BatchCounts, BatchRunner


def add_batch_parser(commands) -> None:
    from polyhead.cli import add_backbone_args, add_engine_args, add_generation_config_argument

    p = commands.add_parser("batch", help="run an OpenAI Batch API .jsonl file through one engine",
                            description="Run every line of an OpenAI Batch API input file (custom_id, method, url, "
                            "body; urls /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/classify, "
                            "/v1/tag, /v1/score, /v1/rerank) and write OpenAI's output lines in input order. "
                            "A rerun on the same OUTPUT skips the lines already written.")
    p.add_argument("input", type=Path, help="the input .jsonl, one request a line")
    p.add_argument("output", type=Path, help="the output .jsonl; appended to, so an interrupted run resumes")
    p.add_argument("--max-concurrency", type=int, default=None,
                   help="lines in flight at once (default: twice --max-num-seqs, so the engine's batch stays full)")
    p.add_argument("--served-model-name", default=None, help="the model name lines send (default: the model's)")
    p.add_argument("--default-max-tokens", type=int, default=256, help="when a body sets none (default: 256)")
    p.add_argument("--request-timeout", type=float, default=3600.0,
                   help="seconds one line may take before it is answered 408 (default: 3600)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_backbone_args(p)
    add_generation_config_argument(p)
    add_engine_args(p)
    p.set_defaults(func=batch_command)


def batch_command(args) -> int:
    counts, skipped, seconds = run_batch(args)
    rate = counts.total / seconds if seconds > 0 else 0.0
    print(f"polyhead batch: {counts.total} lines run ({counts.completed} completed, {counts.failed} failed), "
          f"{skipped} already written; {seconds:.1f} s, {rate:.2f} lines/s -> {args.output}", file=sys.stderr)
    return 0


def run_batch(args) -> tuple[BatchCounts, int, float]:
    """Load the engines `args` name, run the file, stop them: (counts, lines skipped, seconds running)."""
    if not args.input.is_file():
        raise ValueError(f"INPUT {args.input} is not a file")
    if args.output.resolve() == args.input.resolve():
        raise ValueError("OUTPUT must not be INPUT: the output is appended to")
    keys_written(args.output)  # an OUTPUT that is not batch output is refused before the model loads
    app, registry = build_batch_app(args)
    try:
        return asyncio.run(run_file(app, args.input, args.output, max_concurrency(args),
                                    show_progress=not args.no_progress))
    finally:
        registry.stop()


def build_batch_app(args):
    """The server's app and its engines as `polyhead serve` would build them from `args`, without a socket."""
    from polyhead.cli import build_task_registry, parse_lora_modules
    from polyhead.models.registry import DEFAULT_MODEL
    from polyhead.server.app import ServerSettings, build_app

    max_concurrency(args)  # checked before the model loads
    # The queue limits guard a server against many clients; here the window bounds what is queued.
    settings = ServerSettings(
        model_names=[args.served_model_name or args.model or DEFAULT_MODEL],
        lora_names=list(parse_lora_modules(args.lora_modules)), default_max_tokens=args.default_max_tokens,
        max_queued_requests=1 << 30, max_queued_tokens=1 << 40, request_timeout_s=args.request_timeout,
        max_request_bytes=1 << 30, generation_config=args.generation_config, web=False)
    registry = build_task_registry(args, settings.model_names[0])
    return build_app(registry.backbones[registry.default_backbone].engine, settings, registry), registry


def max_concurrency(args) -> int:
    value = args.max_concurrency or 2 * args.max_num_seqs
    if value < 1:
        raise ValueError(f"--max-concurrency must be >= 1, got {value}")
    return value


async def run_file(app, input_path: Path, output_path: Path, max_concurrency: int,
                   show_progress: bool = True) -> tuple[BatchCounts, int, float]:
    """Run `input_path` into `output_path` through `app`: (counts, lines skipped as written, seconds)."""
    from tqdm import tqdm

    for engine in app.state.server.registry.engines:
        if not engine.is_running:
            engine.start()
    done = keys_written(output_path)
    lines = list(read_lines(input_path))
    num_skipped = sum(line.key in done for line in lines)
    runner = BatchRunner(app, max_concurrency)
    start = time.monotonic()
    with output_path.open("a", encoding="utf-8") as output, \
            tqdm(total=len(lines), initial=num_skipped, unit="req", desc="batch", disable=not show_progress) as bar:
        def write(item: dict) -> None:
            output.write(json.dumps(item) + "\n")  # ASCII escapes: any string the input held can be written
            output.flush()

        try:
            counts = await runner.run(lines, write, frozenset(done), on_line_done=lambda _: bar.update())
        finally:
            await runner.aclose()
    return counts, num_skipped, time.monotonic() - start
