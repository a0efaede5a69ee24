"""Resident memory of an OpenAI-compatible server's process tree, idle and under load.

Starts `polyhead serve` (the arguments after `--`), or attaches to a running server given its
`--pid` (a llama-server, or a polyhead started elsewhere), then reads every process of the tree
(the server and all its descendants: polyhead's engine children, multiprocessing's resource
tracker) from /proc: VmRSS and VmHWM (/proc/<pid>/status) and PSS (/proc/<pid>/smaps_rollup,
which splits pages shared between processes, so the PSS total does not count the shared
libraries twice). Three readings:

  idle      after one request (so first-request allocations are in), then a quiet second
  load      the peak seen while `polyhead bench serve` runs --clients concurrent streaming clients
  after     quiet again once the load has ended

    PYTHONPATH=$PWD python scripts/measure_rss.py --clients 32 -- --threads 2
    PYTHONPATH=$PWD python scripts/measure_rss.py --pid $(pgrep -n llama-server) --url http://127.0.0.1:8080

Linux only (reads /proc). Prints a table and the command that made it.
"""

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from polyhead.bench.server_process import free_port, wait_healthy

REPO = Path(__file__).resolve().parent.parent
MB = 1e6


def descendants(root: int) -> list[int]:
    """`root` and every process below it, by the parent pid each /proc/<pid>/stat names."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone since the listing
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the name may hold spaces: fields after ")"
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(tree)


def read_memory(pid: int) -> dict | None:
    """{'rss', 'hwm', 'pss'} in bytes, or None when the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith("Vm")}
        pss = 0
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
        except OSError:  # another user's process: PSS needs ptrace rights
            pss = 0
        return {"rss": int(fields.get("VmRSS", 0)) * 1024, "hwm": int(fields.get("VmHWM", 0)) * 1024, "pss": pss}
    except (OSError, ValueError, IndexError):
        return None


def process_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    program = Path(argv[0].decode(errors="replace")).name
    if not program.startswith("python"):
        return program or text[:40]  # llama-server, or a wrapper such as timeout
    if "multiprocessing.resource_tracker" in text:
        return "resource tracker"
    if "multiprocessing.spawn" in text:
        return "engine child (spawn)"
    if "polyhead.cli serve" in text or "polyhead serve" in text:
        return "polyhead serve"
    return text[:40]


def snapshot(root: int) -> dict[int, dict]:
    return {pid: mem for pid in descendants(root) if (mem := read_memory(pid)) is not None}


class PeakSampler:
    """Samples the tree every `interval` s on a thread; keeps each process's largest RSS and PSS."""

    def __init__(self, root: int, interval: float = 0.25):
        self.root, self.interval = root, interval
        self.peak: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            for pid, mem in snapshot(self.root).items():
                best = self.peak.setdefault(pid, dict(mem))
                for key in ("rss", "pss"):
                    best[key] = max(best[key], mem[key])
            self._stop.wait(self.interval)


def one_request(url: str) -> None:
    model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0.0}
    httpx.post(f"{url}/v1/completions", json=body, timeout=300).raise_for_status()


def run_load(args, url: str) -> int:
    command = [sys.executable, "-m", "polyhead.bench.serve", "--url", url, "--concurrency", str(args.clients),
               "--num-requests", str(args.num_requests or args.clients), "--input-len", str(args.input_len),
               "--output-len", str(args.output_len)]
    print("$", shlex.join(command), file=sys.stderr)
    return subprocess.run(command, check=False, env=_env(), stdout=sys.stderr).returncode


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def table(readings: dict[str, dict[int, dict]], names: dict[int, str]) -> str:
    phases = list(readings)
    pids = sorted({pid for reading in readings.values() for pid in reading})
    head = ["process", "pid"] + [f"{phase} {key}" for phase in phases for key in ("RSS MB", "PSS MB")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    for pid in pids:
        row = [names.get(pid, "?"), str(pid)]
        for phase in phases:
            mem = readings[phase].get(pid)
            row += ["-", "-"] if mem is None else [f"{mem['rss'] / MB:.0f}", f"{mem['pss'] / MB:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    total = ["**total**", ""]
    for phase in phases:
        total += [f"**{sum(m['rss'] for m in readings[phase].values()) / MB:.0f}**",
                  f"**{sum(m['pss'] for m in readings[phase].values()) / MB:.0f}**"]
    lines.append("| " + " | ".join(total) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", type=int, default=None,
                        help="measure this running server's tree instead of starting polyhead serve")
    parser.add_argument("--url", default=None, help="the server's base URL (with --pid; default: the one started)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent streaming clients (default: 32)")
    parser.add_argument("--num-requests", type=int, default=None, help="requests in the load (default: --clients)")
    parser.add_argument("--input-len", type=int, default=32, help="prompt tokens, about (default: 32)")
    parser.add_argument("--output-len", type=int, default=128, help="tokens per reply (default: 128)")
    parser.add_argument("--settle", type=float, default=2.0, help="quiet seconds before an idle reading (default: 2)")
    parser.add_argument("--no-load", action="store_true", help="the idle reading only")
    parser.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: arguments for polyhead serve")
    args = parser.parse_args(argv)
    serve_args = args.serve_args[1:] if args.serve_args[:1] == ["--"] else args.serve_args

    server = None
    if args.pid is None:
        port = free_port()
        args.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "polyhead.cli", "serve", "--port", str(port), *serve_args]
        print("$", shlex.join(command), file=sys.stderr)
        server = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=sys.stderr)
        root = server.pid
    elif args.url is None:
        parser.error("--pid needs --url")
    else:
        root = args.pid
    try:
        wait_healthy(args.url, 600, server)
        one_request(args.url)
        time.sleep(args.settle)
        readings = {"idle": snapshot(root)}
        names = {pid: process_name(pid) for pid in readings["idle"]}
        if not args.no_load:
            with PeakSampler(root) as sampler:
                code = run_load(args, args.url)
            if code != 0:
                print(f"the load ended with exit code {code}: its peak is of what ran", file=sys.stderr)
            readings[f"{args.clients} clients (peak)"] = sampler.peak
            time.sleep(args.settle)
            readings["after"] = snapshot(root)
            names |= {pid: process_name(pid) for reading in readings.values() for pid in reading if pid not in names}
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
    what = "polyhead serve " + shlex.join(serve_args) if server is not None else f"pid {root} at {args.url}"
    load = "idle only" if args.no_load else (f"{args.clients} clients, {args.num_requests or args.clients} requests of "
                                              f"~{args.input_len} prompt + {args.output_len} new tokens")
    print(f"\nresident memory of {what}: {load}\n"
          f"$ {shlex.join(['python', 'scripts/measure_rss.py', *(argv or sys.argv[1:])])}")
    print(table(readings, names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
