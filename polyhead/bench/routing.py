"""`polyhead bench routing`: routing policies compared at scale, in simulation, on one machine.

A seeded workload (routing_workload.py) is replayed through each policy's own code (routing_policies.py;
polyhead's is CacheAwarePolicy.rank, what the Ray router calls) against 4-64 simulated replicas, each a
model of the engine calibrated on this machine's measured step times (routing_replica.py,
routing_calibration.py). Prints prefix-hit rate, adapter loads, TTFT p50/p99 and goodput per policy and
fleet size, and the command that made them.

The arrival rate is `--load` times the fleet's estimated capacity: a replica serves about
1 / (b x prompt + output x (c + a / 32)) requests/s with every prompt computed and 32 rows a step.
"""

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from datetime import date

from polyhead.bench.routing_calibration import StepTimeModel, calibrate, load_calibration
from polyhead.bench.routing_policies import POLICIES, make_policy
from polyhead.bench.routing_replica import ReplicaConfig
from polyhead.bench.routing_sim import simulate
from polyhead.bench.routing_workload import WORKLOADS, make_workload, mean_tokens

DEFAULT_POLICIES = ("round-robin", "power-of-two", "ray-prefix", "ray-prefix-t16", "polyhead")
ROWS_PER_STEP = 32  # the batch the capacity estimate assumes


def replica_capacity(model: StepTimeModel, mean_prompt: float, mean_output: float) -> float:
    """Requests/s one replica serves with no prefix cache, ROWS_PER_STEP decode rows a step."""
    seconds = model.per_prefill_token_s * mean_prompt + mean_output * (
        model.per_decode_row_s + model.base_s / ROWS_PER_STEP)
    return 1.0 / seconds


def run_grid(workload: str, replica_counts: list[int], policies: list[str], requests_per_replica: int,
             load: float, seed: int, model: StepTimeModel, config: ReplicaConfig, slo_s: float,
             imbalance_threshold: int) -> list[dict]:
    """Every policy at every fleet size, on the same requests (same seed) for one fleet size."""
    probe = make_workload(workload, 500, 1.0, seed, config.block_size)
    capacity = replica_capacity(model, *mean_tokens(probe))
    rows = []
    for num_replicas in replica_counts:
        rate = load * capacity * num_replicas
        for name in policies:
            requests = make_workload(workload, requests_per_replica * num_replicas, rate, seed, config.block_size)
            start = time.perf_counter()
            result = simulate(requests, make_policy(name, imbalance_threshold), num_replicas, config, model,
                              seed=seed, slo_s=slo_s)
            if result.num_finished != len(requests):
                raise RuntimeError(f"{name}: {result.num_finished} of {len(requests)} requests finished")
            rows.append(result.row() | {"workload": workload, "rate": rate, "sim_wall_s": time.perf_counter() - start})
            print(f"  {workload} x{num_replicas} {name}: p99 TTFT {result.ttft_p99_s:.3f} s "
                  f"({rows[-1]['sim_wall_s']:.1f} s)", file=sys.stderr, flush=True)
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [("| workload | replicas | policy | prefix hit | adapter loads | TTFT p50 (s) | TTFT p99 (s) "
              "| goodput (req/s, TTFT <= SLO) |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['num_replicas']} | {r['policy']} | {r['prefix_hit_rate']:.1%} "
                     f"| {r['adapter_loads']} | {r['ttft_p50_s']:.3f} | {r['ttft_p99_s']:.3f} | {r['goodput']:.1f} |")
    return "\n".join(lines)


def p99_ratios(rows: list[dict], baseline: str = "power-of-two", policy: str = "polyhead") -> list[str]:
    """`baseline` p99 TTFT / `policy` p99 TTFT per workload and fleet size."""
    lines = []
    for r in rows:
        if r["policy"] != policy:
            continue
        base = next((b for b in rows if b["policy"] == baseline and b["workload"] == r["workload"]
                     and b["num_replicas"] == r["num_replicas"]), None)
        if base is not None and r["ttft_p99_s"] > 0:
            lines.append(f"{r['workload']} x{r['num_replicas']}: {baseline} p99 TTFT / {policy} = "
                         f"{base['ttft_p99_s'] / r['ttft_p99_s']:.2f}x")
    return lines


def plot(rows: list[dict], path: str) -> None:
    """p99 TTFT and prefix-hit rate against fleet size, one line per policy, a panel pair per workload."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig = Figure(figsize=(10, 3.6 * len(workloads)), layout="constrained")
    axes = fig.subplots(len(workloads), 2, squeeze=False)
    for (ttft, hit), workload in zip(axes, workloads):
        for policy in dict.fromkeys(r["policy"] for r in rows):
            mine = [r for r in rows if r["workload"] == workload and r["policy"] == policy]
            xs = [r["num_replicas"] for r in mine]
            ttft.plot(xs, [r["ttft_p99_s"] for r in mine], marker="o", label=policy)
            hit.plot(xs, [100 * r["prefix_hit_rate"] for r in mine], marker="o", label=policy)
        for ax, title, y_label in ((ttft, "TTFT p99", "seconds (log)"), (hit, "prefix-hit rate", "% of prompt tokens")):
            ax.set(title=f"{workload}: {title}", xlabel="replicas", ylabel=y_label)
            ax.set_xscale("log", base=2)
            counts = sorted({r["num_replicas"] for r in rows})
            ax.set_xticks(counts, labels=[str(n) for n in counts])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        ttft.set_yscale("log")
    fig.suptitle("polyhead bench routing (simulated replicas, calibrated step times)")
    fig.savefig(path, dpi=110)


def run_routing(args) -> int:
    if args.calibrate:
        calibrate(args.calibration or "routing_step_time.json", threads=args.threads)
        return 0
    model = load_calibration(args.calibration)
    config = ReplicaConfig(max_loras=args.max_loras, kv_blocks=args.kv_blocks, max_ongoing=args.max_ongoing)
    rows = []
    for workload in args.workload:
        rows += run_grid(workload, args.replicas, args.policies, args.requests_per_replica, args.load, args.seed,
                         model, config, args.slo, args.imbalance_threshold)
    print(f"\npolyhead bench routing, {date.today()}: simulated replicas, step_s = {model.base_s * 1e3:.1f} ms + "
          f"{model.per_prefill_token_s * 1e3:.3f} ms x prefill tokens + {model.per_decode_row_s * 1e3:.3f} ms x "
          f"decode rows, adapter load {model.adapter_load_s:.2f} s; load {args.load:.0%} of the no-cache capacity, "
          f"{args.requests_per_replica} requests per replica, seed {args.seed}, TTFT SLO {args.slo:g} s")
    print("command: polyhead bench routing " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["bench", "routing"]
                                                          else sys.argv[1:]))
    print(markdown_table(rows))
    for line in p99_ratios(rows):
        print(line)
    if args.out:
        with open(args.out, "w") as f:
            if args.out.endswith(".csv"):
                names = list(rows[0])
                f.write(",".join(names) + "\n")
                f.writelines(",".join(str(r[n]) for n in names) + "\n" for r in rows)
            else:
                json.dump({"args": vars(args) | {"func": None}, "model": asdict(model), "rows": rows}, f, indent=2)
    if args.plot:
        plot(rows, args.plot)
    return 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def add_routing_parser(commands) -> None:
    p = commands.add_parser("routing", help="routing policies at 4-64 simulated replicas (prefix hits, TTFT)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=_ints, default=[8, 32, 64], help="comma-separated fleet sizes (default: 8,32,64)")
    p.add_argument("--policies", type=lambda s: s.split(","), default=list(DEFAULT_POLICIES),
                   help=f"comma-separated, of {', '.join(POLICIES)} (ray-prefix-tN: Ray's with threshold N)")
    p.add_argument("--workload", type=lambda s: s.split(","), default=["shared-prefix", "mixed"],
                   help=f"comma-separated, of {', '.join(WORKLOADS)} (default: shared-prefix,mixed)")
    p.add_argument("--requests-per-replica", type=int, default=200, help="requests per replica (default: 200)")
    p.add_argument("--load", type=float, default=0.7, help="arrival rate as a fraction of capacity (default: 0.7)")
    p.add_argument("--slo", type=float, default=2.0, help="TTFT SLO in seconds for goodput (default: 2)")
    p.add_argument("--imbalance-threshold", type=int, default=16, help="polyhead's imbalance_threshold (default: 16)")
    p.add_argument("--max-loras", type=int, default=4, help="resident adapters per replica (default: 4)")
    p.add_argument("--kv-blocks", type=int, default=2048, help="KV blocks per replica (default: 2048)")
    p.add_argument("--max-ongoing", type=int, default=128, help="Ray's max_ongoing_requests (default: 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the rows to this .csv or .json file")
    p.add_argument("--plot", default=None, help="write p99 TTFT and hit rate by fleet size to this PNG")
    p.add_argument("--calibration", default=None,
                   help="step-time JSON to read (default: the one shipped); with --calibrate, where to write it")
    p.add_argument("--calibrate", action="store_true",
                   help="measure the real engine's step times on this machine and fit the model, then exit")
    p.add_argument("--threads", type=int, default=None, help="torch threads for --calibrate")
    p.set_defaults(func=run_routing)
