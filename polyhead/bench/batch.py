"""`polyhead batch` against `polyhead serve` on the same requests: the throughput an offline batch
file gets through one engine, and what 32 streaming clients get from the server with the same
engine flags.

Both runs get the same `--num-requests` chat requests (seeded prompts of about `--input-len`
tokens, greedy, exactly `--output-len` new tokens via ignore_eos). The batch is timed from its
first line to its last (model load excluded); the server, started as its own process, from the
first client request to the last, after one warm-up request. Engine flags after `--` go to both.
"""

import argparse
import asyncio
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from polyhead.bench.report import summarize_level
from polyhead.bench.serve import make_prompts, request_body, run_closed_level, send_request
from polyhead.bench.server_process import free_port, wait_healthy

MODEL_NAME = "bench"  # what both runs serve the model as


def batch_lines(prompts: list[str], output_len: int) -> list[dict]:
    lines = []
    for i, prompt in enumerate(prompts):
        body = request_body("chat", MODEL_NAME, prompt, output_len, length_hints=False)
        body.update(stream=False, ignore_eos=True)
        body.pop("stream_options")
        lines.append({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return lines


def run_offline_batch(lines: list[dict], folder: Path, engine_flags: list[str]) -> dict:
    from polyhead.batch.command import build_batch_app, max_concurrency, run_file
    from polyhead.cli import build_parser

    (folder / "input.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    warm = {**lines[0], "body": {**lines[0]["body"], "max_tokens": 4}}  # untimed, as the server's warm-up
    (folder / "warm.jsonl").write_text(json.dumps(warm) + "\n")
    args = build_parser().parse_args(["batch", str(folder / "input.jsonl"), str(folder / "output.jsonl"),
                                      "--served-model-name", MODEL_NAME, "--no-progress", *engine_flags])
    app, registry = build_batch_app(args)
    try:
        async def warm_then_run():
            await run_file(app, folder / "warm.jsonl", folder / "warm-output.jsonl", 1, show_progress=False)
            return await run_file(app, args.input, args.output, max_concurrency(args))

        counts, _, seconds = asyncio.run(warm_then_run())
    finally:
        registry.stop()
    outputs = [json.loads(x) for x in (folder / "output.jsonl").read_text().splitlines()]
    tokens = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in outputs
                 if o["response"] and o["response"]["status_code"] == 200)
    failed = [o for o in outputs if not (o["response"] and o["response"]["status_code"] == 200)]
    return {"run": "polyhead batch", "requests": counts.completed, "errors": counts.failed, "seconds": seconds,
            "req_per_s": counts.completed / seconds, "output_tok_per_s": tokens / seconds,
            "error_samples": [json.dumps(o["error"] or o["response"]["body"])[:200] for o in failed[:3]]}


def run_served(prompts: list[str], args, engine_flags: list[str]) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "polyhead.cli", "serve", "--port", str(port), "--served-model-name", MODEL_NAME,
               "--max-queued-requests", str(max(256, args.clients)), *engine_flags]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, args.timeout, server)
        rows = asyncio.run(_clients(url, prompts, args))
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    row, seconds = rows
    return {"run": f"polyhead serve, {args.clients} clients", "requests": row["num_ok"],
            "errors": row["num_errors"], "seconds": seconds,
            "req_per_s": row["num_ok"] / seconds,
            "output_tok_per_s": row["output_tok_s"], "error_samples": row["error_samples"]}


async def _clients(url: str, prompts: list[str], args) -> tuple[dict, float]:
    from tqdm import tqdm

    path = "/v1/chat/completions"
    bodies = [request_body("chat", MODEL_NAME, p, args.output_len) for p in prompts]
    limits = httpx.Limits(max_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as client:
        await send_request(client, path, request_body("chat", MODEL_NAME, prompts[0], 4), args.timeout)  # warm-up
        with tqdm(total=len(bodies), desc=f"serve, {args.clients} clients", unit="req") as progress:
            start = time.perf_counter()
            results = await run_closed_level(client, path, bodies, args.clients, args.timeout, progress)
            seconds = time.perf_counter() - start
    return summarize_level(results, seconds, args.clients, None), seconds


def bench_batch(args) -> int:
    if args.num_requests < args.clients or args.clients < 1:
        raise ValueError(f"--num-requests ({args.num_requests}) must be at least --clients ({args.clients}) >= 1")
    engine_flags = [flag for flag in args.engine_flags if flag != "--"]
    prompts = make_prompts(args.num_requests, args.input_len, args.seed)
    with tempfile.TemporaryDirectory(prefix="polyhead-bench-batch-") as folder:
        batch = run_offline_batch(batch_lines(prompts, args.output_len), Path(folder), engine_flags)
    served = run_served(prompts, args, engine_flags)
    print(f"\n{args.num_requests} chat requests, prompt ~{args.input_len} tokens, {args.output_len} new tokens each"
          f"\n$ {shlex.join(sys.argv)}")
    print("| run | requests | errors | seconds | req/s | output tok/s |\n|---|---|---|---|---|---|")
    for row in (batch, served):
        print(f"| {row['run']} | {row['requests']} | {row['errors']} | {row['seconds']:.1f} | {row['req_per_s']:.2f} "
              f"| {row['output_tok_per_s']:.1f} |")
    if served["output_tok_per_s"]:
        print(f"batch / serve output tok/s: {batch['output_tok_per_s'] / served['output_tok_per_s']:.2f}x")
    for row in (row for row in (batch, served) if row["errors"]):
        print(f"{row['run']}: {row['errors']} errors, e.g. " + "; ".join(row["error_samples"]), file=sys.stderr)
    return 0 if not batch["errors"] and not served["errors"] else 1


def add_batch_bench_parser(commands) -> None:
    p = commands.add_parser("batch", help="polyhead batch vs polyhead serve on the same requests",
                            description=__doc__.split("\n\n")[0])
    p.add_argument("--num-requests", type=int, default=512, help="requests in each run (default: 512)")
    p.add_argument("--clients", type=int, default=32, help="concurrent streaming clients of the server (default: 32)")
    p.add_argument("--input-len", type=int, default=32, help="prompt tokens, approximately (default: 32)")
    p.add_argument("--output-len", type=int, default=64, help="new tokens per request (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="prompt windows (default: 0)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per server request (default: 600)")
    p.add_argument("engine_flags", nargs=argparse.REMAINDER,
                   help="after --: engine flags for both runs, e.g. -- --max-num-seqs 64 --dtype float32")
    p.set_defaults(func=bench_batch)
