"""What per-row LoRA costs a decode step: N sequences decoding together with 0, 1, 2, 4 distinct
adapters (rows split evenly), against the same rows on a model without LoRA, and against running
each adapter's rows as a forward of its own (what serving k adapters as k models would do):

    python -m polyhead.bench.lora --sequences 32 --ranks 8 16

Adapters are random, in PEFT's format, on all of q/k/v/o/gate/up/down. A step is timed by
running the same scheduled decode step again and again (the KV writes are idempotent), so every
configuration sees the same rows, positions and context lengths.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from polyhead.engine.decoder.scheduler import SchedulerOutput

PEFT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_random_adapter(folder: Path, model_config, rank: int, seed: int, targets=PEFT_TARGETS) -> Path:
    """A PEFT-format LoRA adapter with random A and B for the given backbone shape."""
    c = model_config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    shapes = {"q_proj": (c.hidden_size, q), "k_proj": (c.hidden_size, kv), "v_proj": (c.hidden_size, kv),
              "o_proj": (q, c.hidden_size), "gate_proj": (c.hidden_size, c.intermediate_size),
              "up_proj": (c.hidden_size, c.intermediate_size), "down_proj": (c.intermediate_size, c.hidden_size)}
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(c.num_layers):
        for target in targets:
            part = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{part}.{target}"
            fan_in, fan_out = shapes[target]
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen) / fan_in ** 0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen) * 0.01
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(targets),
              "bias": "none", "use_rslora": False, "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
clock = time.perf_counter


def time_step(runner, sched: SchedulerOutput, repeats: int) -> tuple[float, float]:
    """(median, best) milliseconds of runner.execute(sched) over `repeats` runs, after warm-up."""
    for _ in range(3):
        runner.execute(sched)
    times = []
    for _ in range(repeats):
        start = clock()
        runner.execute(sched)
        times.append(clock() - start)
    return statistics.median(times) * 1000, min(times) * 1000


def assign(engine, sched: SchedulerOutput, names: list[str]) -> None:
    """Give the scheduled rows adapters round-robin (row i gets adapter i mod k), resident."""
    for i, (request, _) in enumerate(sched.scheduled):
        request.adapter = names[i % len(names)] if names else None
    for name in names:
        while not engine.backend.lora.is_ready(name):
            engine.backend.lora.wait_loaded(name)


def run(sequences: int, context: int, ranks: list[int], repeats: int, dtype: str) -> list[dict]:
    from polyhead.bench.offline import make_prompts
    from polyhead.engine.core.params import SamplingParams
    from polyhead.llm import LLM

    llm = LLM(dtype=dtype, kv_cache_memory="1GiB", max_num_seqs=sequences, max_loras=4, max_num_batched_tokens=4096)
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    for prompt in make_prompts(llm.tokenizer, sequences, context, seed=0):
        engine.add_request(prompt, params)
    while any(r.num_computed_tokens != r.num_tokens - 1 for r in engine.backend.scheduler.requests.values()):
        engine.step()
    sched = engine.backend.scheduler.schedule()  # one decode row per sequence, timed again and again below
    assert len(sched.scheduled) == sequences and all(n == 1 for _, n in sched.scheduled)
    rows = [{"rank": "-", "adapters": 0, "rows": "model without LoRA layers",
             "ms": time_step(engine.backend.runner, sched, repeats)}]
    order_rows = engine.backend.lora.order_rows
    with tempfile.TemporaryDirectory() as tmp:
        for rank in ranks:
            names = [f"r{rank}-{i}" for i in range(4)]
            for i, name in enumerate(names):
                folder = write_random_adapter(Path(tmp) / name, engine.backend.model_config, rank, i)
                engine.register_adapter(name, str(folder))
            for k in (0, 1, 2, 4):
                for grouped in ((True, False) if k > 1 else (True,)):
                    assign(engine, sched, names[:k])
                    # the runner groups rows by adapter; turned off, each adapter's rows are scattered
                    engine.backend.lora.order_rows = order_rows if grouped else (lambda scheduled: scheduled)
                    ms = time_step(engine.backend.runner, sched, repeats)
                    engine.backend.lora.order_rows = order_rows
                    separate = [time_step(engine.backend.runner, SchedulerOutput(
                        [(r, n) for r, n in sched.scheduled if r.adapter == name], sequences // k), repeats)
                        for name in names[:k]] if grouped else []
                    rows.append({"rank": rank, "adapters": k, "ms": ms,
                                 "rows": "grouped by the runner" if grouped else "scattered (gather/scatter)",
                                 "separate_ms": (sum(m for m, _ in separate), sum(b for _, b in separate))
                                 if separate else None})
    assign(engine, sched, [])
    rows.append({"rank": "-", "adapters": 0, "rows": "base rows, LoRA layers attached (again, at the end)",
                 "ms": time_step(engine.backend.runner, sched, repeats)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m polyhead.bench.lora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--context", type=int, default=128, help="prompt tokens per sequence")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", default="wall", choices=list(CLOCKS),
                        help="wall: elapsed time; thread: CPU time of this thread (needs --threads 1), which "
                        "other processes competing for the CPU do not inflate")
    args = parser.parse_args()
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread measures one thread: add --threads 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    global clock
    clock = CLOCKS[args.clock]
    torch.manual_seed(0)
    rows = run(args.sequences, args.context, args.ranks, args.repeats, args.dtype)
    base = rows[0]["ms"][0]
    print(f"decode step, {args.sequences} rows, context {args.context}, dtype {args.dtype}, "
          f"{torch.get_num_threads()} threads, {args.clock} clock; ms per step, median (best) of {args.repeats}")
    print("| rank | distinct adapters | rows | ms/step | vs no LoRA | each adapter's rows as its own forward, summed |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        (median, best), separate = row["ms"], row.get("separate_ms")
        separate = f"{separate[0]:.1f} ({separate[1]:.1f})" if separate else "-"
        print(f"| {row['rank']} | {row['adapters']} | {row['rows']} | {median:.1f} ({best:.1f}) | "
              f"{median / base:.2f}x | {separate} |")
    print("command: python -m polyhead.bench.lora " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
