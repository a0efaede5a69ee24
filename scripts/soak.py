"""Soak a running `polyhead serve --tasks default`: chat streams (some cut at a random point, as
clients that leave), classify and embed requests at steady rates, for hours. Every minute it
samples the resident memory of every process of the server, the KV-cache use, the engine's
queue, and each kind's p99 latency and errors over that minute, into a CSV; at the end a PNG
of the series and the verdict: RSS slope and end-vs-start change, p99 drift, errors.

Usage (scripts/soak.sh starts the server and calls this):
  python scripts/soak.py --url http://127.0.0.1:18450 --server-pid PID --hours 1 --csv soak.csv --plot soak.png
"""

import argparse
import asyncio
import csv
import random
import re
import time
from pathlib import Path

import httpx

from polyhead.bench.mixed import send_json, task_bodies
from polyhead.bench.report import RequestResult, percentile
from polyhead.bench.serve import make_prompts, request_body, send_request

FIELDS = ["minute", "rss_total_mb", "rss_per_process_mb", "kv_usage", "queue_waiting", "chat_p99_s",
          "classify_p99_s", "embed_p99_s", "requests", "errors", "disconnects", "an_error"]


def process_tree_rss_mb(pid: int) -> dict[int, float]:
    """VmRSS of `pid` and its descendants, in MB."""
    pids, frontier = [pid], [pid]
    while frontier:
        children = []
        for p in frontier:
            try:
                children += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
            except OSError:
                pass
        pids += children
        frontier = children
    rss = {}
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        if match:
            rss[p] = int(match.group(1)) / 1024
    return rss


def gauge(metrics: str, name: str) -> float:
    """Sum of a Prometheus gauge over its labels."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith((name + "{", name + " ")))


async def chat_client(client, url, prompts, rng, stop_at, results, disconnect_share: float) -> None:
    """Closed loop; a share of the streams is cut after a random time (the client goes away)."""
    i = 0
    while time.perf_counter() < stop_at:
        body = request_body("chat", "chat", prompts[i % len(prompts)], 64)
        i += 1
        if rng.random() < disconnect_share:
            try:
                await asyncio.wait_for(send_request(client, url, body, 120), timeout=rng.uniform(0.05, 1.5))
            except TimeoutError:
                results.append(("disconnect", None))
                continue
        results.append(("chat", await send_request(client, url, body, 120)))


async def steady(client, url, bodies, rate, rng, stop_at, results, kind) -> None:
    tasks = []

    async def one(body):
        results.append((kind, await send_json(client, url, body, 60)))

    for body in bodies:
        await asyncio.sleep(rng.expovariate(rate))
        if time.perf_counter() >= stop_at:
            break
        tasks.append(asyncio.create_task(one(body)))
    await asyncio.gather(*tasks)


async def sampler(client, args, stop_at, results, rows) -> None:
    minute, taken = 0, 0
    while time.perf_counter() < stop_at:
        await asyncio.sleep(args.sample_every)
        minute += 1
        window, taken = results[taken:], len(results)
        metrics = (await client.get(f"{args.url}/metrics", timeout=30)).text
        rss = process_tree_rss_mb(args.server_pid)
        row = {"minute": minute, "rss_total_mb": round(sum(rss.values()), 1),
               "rss_per_process_mb": " ".join(f"{p}:{m:.0f}" for p, m in sorted(rss.items())),
               "kv_usage": round(gauge(metrics, "polyhead_kv_cache_usage_ratio"), 4),
               "queue_waiting": gauge(metrics, "polyhead_queue_waiting"),
               "requests": sum(1 for kind, _ in window if kind != "disconnect"),
               "errors": sum(1 for kind, r in window if kind != "disconnect" and r.error is not None),
               "disconnects": sum(1 for kind, _ in window if kind == "disconnect"),
               "an_error": next((f"{k}: {r.error}"[:160] for k, r in window if k != "disconnect" and r.error), "")}
        for kind in ("chat", "classify", "embed"):
            done = [r.e2e_s for k, r in window if k == kind and r.error is None]
            row[f"{kind}_p99_s"] = round(percentile(done, 99), 3) if done else ""
        rows.append(row)
        print(", ".join(f"{k}={v}" for k, v in row.items() if k != "rss_per_process_mb"), flush=True)


async def soak(args) -> list[dict]:
    stop_at = time.perf_counter() + args.hours * 3600
    results: list[tuple[str, RequestResult | None]] = []
    rows: list[dict] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        prompts = make_prompts(256, 32, args.seed)
        loads = [chat_client(client, f"{args.url}/v1/chat/completions", prompts[i::args.chat_streams],
                             random.Random(args.seed + i), stop_at, results, args.disconnect_share)
                 for i in range(args.chat_streams)]
        bodies = argparse.Namespace(task_input_len=24, classify_task="sentiment", embed_model="embed")
        loads.append(steady(client, f"{args.url}/v1/classify", task_bodies("classify", bodies, 1), args.classify_rate,
                            random.Random(args.seed + 100), stop_at, results, "classify"))
        loads.append(steady(client, f"{args.url}/v1/embeddings", task_bodies("embed", bodies, 2), args.embed_rate,
                            random.Random(args.seed + 200), stop_at, results, "embed"))
        await asyncio.gather(sampler(client, args, stop_at, results, rows), *loads)
    return rows


def verdict(rows: list[dict]) -> str:
    """RSS change from the first to the last quarter, its slope, p99 drift, errors."""
    if len(rows) < 4:
        return "too short for a verdict (fewer than 4 samples)"
    quarter = max(1, len(rows) // 4)
    first = sum(r["rss_total_mb"] for r in rows[:quarter]) / quarter
    last = sum(r["rss_total_mb"] for r in rows[-quarter:]) / quarter
    n = len(rows)
    xs = list(range(n))
    mean_x, mean_y = sum(xs) / n, sum(r["rss_total_mb"] for r in rows) / n
    slope = (sum((x - mean_x) * (r["rss_total_mb"] - mean_y) for x, r in zip(xs, rows))
             / sum((x - mean_x) ** 2 for x in xs))
    change = 100 * (last / first - 1)
    # the second half alone: a warm-up (KV blocks touched for the first time, allocator arenas) is
    # over by then, and what still grows is what would grow for good
    half = rows[n // 2:]
    half_first = sum(r["rss_total_mb"] for r in half[:len(half) // 2]) / max(1, len(half) // 2)
    half_last = sum(r["rss_total_mb"] for r in half[len(half) // 2:]) / max(1, len(half) - len(half) // 2)
    lines = [f"RSS: first quarter {first:.0f} MB, last quarter {last:.0f} MB ({change:+.1f}%), "
             + f"slope {slope:+.2f} MB per sample",
             (f"RSS over the second half: third quarter {half_first:.0f} MB, last quarter {half_last:.0f} MB "
              f"({100 * (half_last / half_first - 1):+.1f}%)")]
    for kind in ("chat", "classify", "embed"):
        values = [r[f"{kind}_p99_s"] for r in rows if r[f"{kind}_p99_s"] != ""]
        if len(values) >= 4:
            q = max(1, len(values) // 4)
            lines.append(f"{kind} p99: first quarter {sum(values[:q]) / q:.3f} s, last quarter "
                         f"{sum(values[-q:]) / q:.3f} s")
    lines.append(f"requests {sum(r['requests'] for r in rows)}, errors {sum(r['errors'] for r in rows)}, "
                 f"disconnects {sum(r['disconnects'] for r in rows)}")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["minute"] for r in rows]
    fig, (ax_rss, ax_p99, ax_kv) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    ax_rss.plot(minutes, [r["rss_total_mb"] for r in rows])
    ax_rss.set_ylabel("RSS, all processes (MB)")
    for kind in ("chat", "classify", "embed"):
        points = [(r["minute"], r[f"{kind}_p99_s"]) for r in rows if r[f"{kind}_p99_s"] != ""]
        ax_p99.plot([m for m, _ in points], [v for _, v in points], label=kind)
    ax_p99.set_ylabel("p99 end to end (s)")
    ax_p99.legend()
    ax_kv.plot(minutes, [r["kv_usage"] for r in rows], label="KV-cache use")
    ax_kv.plot(minutes, [r["queue_waiting"] for r in rows], label="queue waiting")
    ax_kv.set_xlabel("sample")
    ax_kv.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:18450")
    parser.add_argument("--server-pid", type=int, required=True,
                        help="the polyhead serve process (its tree is sampled)")
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds between samples (default: 60)")
    parser.add_argument("--chat-streams", type=int, default=6, help="closed-loop chat clients (default: 6, ~70%% "
                        "of the 2-core machine's capacity with the rates below)")
    parser.add_argument("--classify-rate", type=float, default=2.0)
    parser.add_argument("--embed-rate", type=float, default=4.0)
    parser.add_argument("--disconnect-share", type=float, default=0.2, help="chat streams cut at a random point")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default="soak.csv")
    parser.add_argument("--plot", default="soak.png")
    args = parser.parse_args()
    rows = asyncio.run(soak(args))
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.plot)
    print(verdict(rows))
    print(f"wrote {args.csv} and {args.plot}")


if __name__ == "__main__":
    main()
