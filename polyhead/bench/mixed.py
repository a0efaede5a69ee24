"""Mixed-workload benchmark: chat streams plus classify and embed requests at fixed rates, against
one multi-task server (polyhead serve --tasks default) or a set of servers (llama-server for chat
and a transformers server for classify/embeddings: scripts/two_system_server.py).

Chat is a closed loop of `--chat-streams` clients, each streaming its next request when the
previous one ends; classify and embed requests arrive open-loop (seeded Poisson) at their rates for
`--duration` seconds. A request meets its target when it succeeds within the per-kind latency
targets (chat: TTFT and TPOT; classify/embed: end to end). Goodput = requests meeting their
target per second of the load window; the report also gives chat tok/s and per-kind p50/p99.
"""

import asyncio
import json
import os
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass

import httpx

from polyhead.bench.report import RequestResult, machine_info, percentile
from polyhead.bench.serve import make_prompts, request_body, send_request

KINDS = ("chat", "classify", "embed")


@dataclass(slots=True)
class Targets:
    chat_ttft_s: float = 1.0  # first token within this
    chat_tpot_s: float = 0.1  # and each later token within this on average
    task_e2e_s: float = 0.5  # classify / embed: the whole answer within this

    def met(self, kind: str, result: RequestResult) -> bool:
        if result.error is not None:
            return False
        if kind == "chat":
            tpot = result.tpot_s
            return result.ttft_s <= self.chat_ttft_s and (tpot is None or tpot <= self.chat_tpot_s)
        return result.e2e_s <= self.task_e2e_s


async def send_json(client: httpx.AsyncClient, url: str, body: dict, timeout: float) -> RequestResult:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            response = await client.post(url, json=body)
        if response.status_code != 200:
            error = f"HTTP {response.status_code}: {response.text[:200]}"
            return RequestResult(time.perf_counter() - start, error=error)
        data = response.json()
        if not data.get("data"):
            return RequestResult(time.perf_counter() - start, error=f"no data in {str(data)[:200]}")
    except TimeoutError:
        return RequestResult(time.perf_counter() - start, error=f"timeout after {timeout:g} s")
    except (httpx.HTTPError, OSError, ValueError) as err:
        return RequestResult(time.perf_counter() - start, error=f"{type(err).__name__}: {err}")
    e2e = time.perf_counter() - start
    return RequestResult(e2e, ttft_s=e2e, prompt_tokens=(data.get("usage") or {}).get("prompt_tokens"))


async def chat_stream(client, url: str, model: str, prompts: list[str], output_len: int, stop_at: float,
                      timeout: float, results: list) -> None:
    """One closed-loop chat client: the next request as soon as the previous one ends, until stop_at."""
    i = 0
    while time.perf_counter() < stop_at:
        body = request_body("chat", model, prompts[i % len(prompts)], output_len)
        results.append(await send_request(client, url, body, timeout))
        i += 1


async def open_loop(client, url: str, bodies, rate: float, seed: int, stop_at: float, timeout: float,
                    results: list) -> None:
    """Poisson arrivals at `rate` per second until stop_at; waits for the ones in flight."""
    rng, tasks = random.Random(seed), []

    async def one(body):
        results.append(await send_json(client, url, body, timeout))

    for body in bodies:
        await asyncio.sleep(rng.expovariate(rate))
        if time.perf_counter() >= stop_at:
            break
        tasks.append(asyncio.create_task(one(body)))
    await asyncio.gather(*tasks)


def task_bodies(kind: str, args, seed: int):
    """Endless request bodies of one kind, each input a different window of the benchmark text."""
    rng = random.Random(seed)
    while True:
        text = make_prompts(1, args.task_input_len, rng.randrange(1 << 30))[0]
        if kind == "classify":
            yield {"task": args.classify_task, "input": text}
        else:
            yield {"model": args.embed_model, "input": [text], "encoding_format": "float"}


async def run_mixed(args) -> dict[str, list[RequestResult]]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)  # see bench serve
    results = {kind: [] for kind in KINDS}
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        prompts = make_prompts(256, args.input_len, args.seed)
        warm = await send_request(client, f"{args.chat_url}/v1/chat/completions",
                                  request_body("chat", args.chat_model, prompts[0], 4), args.timeout)
        warm_tasks = [await send_json(client, f"{args.task_url}/v1/classify", next(task_bodies("classify", args, 1)),
                                      args.timeout),
                      await send_json(client, f"{args.task_url}/v1/embeddings", next(task_bodies("embed", args, 1)),
                                      args.timeout)]
        for result in [warm, *warm_tasks]:
            if result.error:
                raise ValueError(f"warm-up request failed: {result.error}")
        start = time.perf_counter()
        stop_at = start + args.duration
        runs = [chat_stream(client, f"{args.chat_url}/v1/chat/completions", args.chat_model,
                            prompts[i::args.chat_streams], args.output_len, stop_at, args.timeout, results["chat"])
                for i in range(args.chat_streams)]
        if args.classify_rate > 0:
            runs.append(open_loop(client, f"{args.task_url}/v1/classify", task_bodies("classify", args, args.seed + 1),
                                  args.classify_rate, args.seed + 1, stop_at, args.timeout, results["classify"]))
        if args.embed_rate > 0:
            runs.append(open_loop(client, f"{args.task_url}/v1/embeddings", task_bodies("embed", args, args.seed + 2),
                                  args.embed_rate, args.seed + 2, stop_at, args.timeout, results["embed"]))
        await asyncio.gather(*runs)
        args.wall_s = time.perf_counter() - start
    return results


def summarize(results: dict[str, list[RequestResult]], wall_s: float, targets: Targets, duration_s: float) -> dict:
    """Per kind: counts, goodput, latency percentiles; plus the totals. Goodput is over the load
    window (`duration_s`, when requests were offered), not the wall time, which also holds the
    drain of the last requests: a system slow to drain would otherwise be charged twice."""
    summary = {"wall_s": wall_s, "duration_s": duration_s}
    total_met = 0
    for kind, items in results.items():
        ok = [r for r in items if r.error is None]
        met = sum(targets.met(kind, r) for r in items)
        total_met += met
        row = {"num_requests": len(items), "num_ok": len(ok), "num_errors": len(items) - len(ok), "num_met": met,
               "goodput_per_s": met / duration_s, "share_met": met / len(items) if items else None,
               "e2e_p50_s": percentile([r.e2e_s for r in ok], 50), "e2e_p99_s": percentile([r.e2e_s for r in ok], 99),
               "error_samples": sorted({r.error for r in items if r.error})[:3]}
        if kind == "chat":
            tokens = sum(r.output_tokens for r in ok)
            row |= {"output_tok_s": tokens / wall_s,
                    "ttft_p50_s": percentile([r.ttft_s for r in ok if r.ttft_s is not None], 50),
                    "ttft_p99_s": percentile([r.ttft_s for r in ok if r.ttft_s is not None], 99),
                    "tpot_p50_ms": _ms(percentile([r.tpot_s for r in ok if r.tpot_s is not None], 50)),
                    "tpot_p99_ms": _ms(percentile([r.tpot_s for r in ok if r.tpot_s is not None], 99))}
        summary[kind] = row
    summary["goodput_per_s"] = total_met / duration_s
    return summary


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(runs: dict[str, dict]) -> str:
    """One row per labelled run (a summary from `summarize`)."""
    lines = [("| system | goodput (req/s) | chat: met / done | chat tok/s | chat TTFT p50 / p99 (s) "
             "| chat TPOT p50 / p99 (ms) | classify: met / done | classify p50 / p99 (s) | embed: met / done "
             "| embed p50 / p99 (s) | errors | load avg before / after |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, s in runs.items():
        chat, cls, emb = s["chat"], s["classify"], s["embed"]
        errors = sum(s[k]["num_errors"] for k in KINDS)
        load = s.get("load_average") or {}
        lines.append(
            f"| {label} | {s['goodput_per_s']:.2f} | {chat['num_met']} / {chat['num_requests']} "
            f"| {chat['output_tok_s']:.1f} | {_fmt(chat['ttft_p50_s'], 3)} / {_fmt(chat['ttft_p99_s'], 3)} "
            f"| {_fmt(chat['tpot_p50_ms'], 1)} / {_fmt(chat['tpot_p99_ms'], 1)} "
            f"| {cls['num_met']} / {cls['num_requests']} | {_fmt(cls['e2e_p50_s'], 3)} / {_fmt(cls['e2e_p99_s'], 3)} "
            f"| {emb['num_met']} / {emb['num_requests']} | {_fmt(emb['e2e_p50_s'], 3)} / {_fmt(emb['e2e_p99_s'], 3)} "
            f"| {errors} | {_fmt(load.get('before_1min'), 1)} / {_fmt(load.get('after_1min'), 1)} |")
    return "\n".join(lines)


def plot(runs: dict[str, dict], path: str) -> None:
    """Goodput per kind, and classify/embed p99, one bar group per system."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    goodput, latency = fig.subplots(1, 2)
    width = 0.8 / max(1, len(runs))
    for i, (label, s) in enumerate(runs.items()):
        xs = [k + i * width for k in range(len(KINDS) + 1)]
        goodput.bar(xs, [s[k]["goodput_per_s"] for k in KINDS] + [s["goodput_per_s"]], width, label=label)
        latency.bar([k + i * width for k in range(3)],
                    [s["classify"]["e2e_p99_s"] or 0, s["embed"]["e2e_p99_s"] or 0, s["chat"]["ttft_p99_s"] or 0],
                    width, label=label)
    goodput.set_xticks([k + 0.4 - width / 2 for k in range(len(KINDS) + 1)], [*KINDS, "all"])
    goodput.set(title="goodput (requests meeting their latency target / s)", ylabel="req/s")
    latency.set_xticks([k + 0.4 - width / 2 for k in range(3)], ["classify e2e", "embed e2e", "chat TTFT"])
    latency.set(title="p99 latency", ylabel="seconds")
    for ax in (goodput, latency):
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
    fig.savefig(path, dpi=120)


def run_bench_mixed(args) -> int:
    if args.compare:
        runs = {}
        for path in args.compare:
            with open(path) as f:
                report = json.load(f)
            runs[report["label"]] = report["summary"]
        print(markdown_table(runs))
        first, *others = list(runs)
        for other in others:
            base = runs[other]["goodput_per_s"]
            ratio = f"{runs[first]['goodput_per_s'] / base:.2f}x" if base > 0 else "infinite (the other met no target)"
            print(f"goodput ratio {first} / {other}: {ratio}")
        if args.plot:
            plot(runs, args.plot)
        return 0
    if args.duration <= 0 or args.chat_streams < 1:
        raise ValueError("--duration must be > 0 and --chat-streams >= 1")
    args.chat_url = (args.chat_url or args.url).rstrip("/")
    args.task_url = (args.task_url or args.url).rstrip("/")
    targets = Targets(args.chat_ttft, args.chat_tpot, args.task_e2e)
    load_before = os.getloadavg()
    results = asyncio.run(run_mixed(args))
    summary = summarize(results, args.wall_s, targets, args.duration)
    # how busy the machine was: the servers' own work plus anything else running
    summary["load_average"] = {"before_1min": load_before[0], "after_1min": os.getloadavg()[0]}
    label = args.label or args.url
    command = shlex.join(sys.argv)
    print(f"\n{label}: {args.chat_streams} chat streams ({args.output_len} tokens), classify {args.classify_rate}/s, "
          f"embed {args.embed_rate}/s for {args.duration:g} s; targets {asdict(targets)}; load average "
          f"{summary['load_average']['before_1min']:.1f} before, {summary['load_average']['after_1min']:.1f} after"
          f"\n$ {command}")
    print(markdown_table({label: summary}))
    for kind in KINDS:
        if summary[kind]["num_errors"]:
            print(f"{kind} errors: " + "; ".join(summary[kind]["error_samples"]), file=sys.stderr)
    if args.json:
        record = {"command": command, "label": label, "targets": asdict(targets), "machine": machine_info(),
                  "args": {k: v for k, v in vars(args).items() if k not in ("func", "compare")}, "summary": summary}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    if args.plot:
        plot({label: summary}, args.plot)
    return 0


def add_mixed_parser(commands) -> None:
    p = commands.add_parser("mixed", help="chat streams plus classify and embed requests at fixed rates: goodput",
                            description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="one server for everything (default: %(default)s)")
    p.add_argument("--chat-url", default=None, help="chat goes here instead (e.g. llama-server)")
    p.add_argument("--task-url", default=None, help="classify and embeddings go here instead")
    p.add_argument("--chat-model", default="chat", help="`model` of chat requests (default: chat)")
    p.add_argument("--classify-task", default="sentiment", help="classify task (default: sentiment)")
    p.add_argument("--embed-model", default="embed", help="`model` of embeddings requests (default: embed)")
    p.add_argument("--chat-streams", type=int, default=8, help="closed-loop chat clients (default: 8)")
    p.add_argument("--classify-rate", type=float, default=2.0, help="classify requests/s, Poisson (default: 2)")
    p.add_argument("--embed-rate", type=float, default=4.0, help="embeddings requests/s, Poisson (default: 4)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: 60)")
    p.add_argument("--input-len", type=int, default=32, help="chat prompt tokens, about (default: 32)")
    p.add_argument("--output-len", type=int, default=64, help="chat tokens per reply (default: 64)")
    p.add_argument("--task-input-len", type=int, default=24, help="classify/embed input tokens, about (default: 24)")
    p.add_argument("--chat-ttft", type=float, default=1.0, help="chat target: TTFT seconds (default: 1)")
    p.add_argument("--chat-tpot", type=float, default=0.1, help="chat target: seconds per token (default: 0.1)")
    p.add_argument("--task-e2e", type=float, default=0.5, help="classify/embed target: seconds (default: 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: 120)")
    p.add_argument("--label", default=None, help="name of the system in the report")
    p.add_argument("--json", default=None, help="write the summary, args and machine to this file")
    p.add_argument("--plot", default=None, help="write the goodput / p99 bars to this PNG")
    p.add_argument("--compare", nargs="+", default=None, metavar="JSON",
                   help="no load: print the table (and --plot) of earlier runs' JSON files, and the first's "
                   "goodput over each other's")
    p.set_defaults(func=run_bench_mixed)
