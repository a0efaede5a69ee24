"""Offline throughput: polyhead's engine next to transformers' `generate`, same prompts, one run.

Each concurrency level runs N sequences of ~`input_len` prompt tokens that each generate exactly
`output_len` tokens (EOS ignored), all submitted at once; output tokens/s = N * output_len / wall.
"""

import argparse
import json
import platform
import random
import time
from datetime import date

from polyhead.quant.flags import add_group_size_argument

CORPUS = (
    "The harbour was quiet before dawn, and the fishing boats rocked against their ropes while gulls "
    "circled over the grey water. Engineers who build inference servers care about latency, throughput "
    "and memory, and they measure each one before they change anything. A recipe for bread needs flour, "
    "water, salt and patience; the dough rests overnight and bakes in a very hot oven. The committee met "
    "on Tuesday to discuss the budget for the new library, which will open next spring with a reading "
    "room, a children's corner and a small cafe. Mountains catch the clouds, so the western valleys are "
    "green while the eastern plains stay dry for most of the year."
)


def make_prompts(tokenizer, num: int, input_len: int, seed: int) -> list[list[int]]:
    """`num` prompts of exactly `input_len` tokens, windows of a fixed text at seeded offsets."""
    ids = tokenizer.encode(CORPUS, add_special_tokens=False)
    rng = random.Random(seed)
    return [ids[start:start + input_len] for start in (rng.randrange(len(ids) - input_len) for _ in range(num))]


def bench_polyhead(llm, prompts, output_len: int) -> float:
    from polyhead.engine.core.params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(o.token_ids) == output_len for o in outs)
    return len(prompts) * output_len / elapsed


# transformers' cache choices trade places by batch size on this CPU (dynamic wins single-stream,
# static at 16-32), so each level reports the better of the two: the peer at its best.
TRANSFORMERS_CACHES = ("dynamic", "static")


def bench_transformers(model, prompts, output_len: int, cache: str) -> float:
    import torch

    input_ids = torch.tensor(prompts)  # equal lengths: one static batch, no padding
    options = {"cache_implementation": "static"} if cache == "static" else {}
    with torch.inference_mode():
        model.generate(input_ids[:1], do_sample=False, max_new_tokens=2, pad_token_id=0, **options)  # warm-up
        start = time.perf_counter()
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             max_new_tokens=output_len, min_new_tokens=output_len, pad_token_id=0, **options)
        elapsed = time.perf_counter() - start
    assert out.shape[1] - input_ids.shape[1] == output_len
    return len(prompts) * output_len / elapsed


def run_offline(args) -> int:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    from polyhead.bench.memory import process_rss_bytes
    from polyhead.config import EngineConfig
    from polyhead.llm import LLM

    if args.threads:
        torch.set_num_threads(args.threads)
    config = EngineConfig(model=args.model, dtype=args.dtype, quantization=args.quantization,
                          quantization_group_size=args.group_size, max_num_seqs=max(args.concurrency),
                          kv_cache_memory=args.kv_cache_memory, num_threads=args.threads)
    llm = LLM.from_config(config)
    dtype = config.torch_dtype
    prompts = make_prompts(llm.tokenizer, max(args.concurrency), args.input_len, args.seed)
    reference = None
    if not args.skip_transformers:
        folder = llm.engine.backend.model_folder
        reference = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()

    bench_polyhead(llm, prompts[:2], 8)  # warm-up: first-call allocations, thread pools
    rows = []
    for num in tqdm(args.concurrency, desc="concurrency levels"):
        row = {"concurrency": num, "polyhead_tok_s": bench_polyhead(llm, prompts[:num], args.output_len)}
        if reference is not None:
            for cache in TRANSFORMERS_CACHES:
                row[f"transformers_{cache}_tok_s"] = bench_transformers(reference, prompts[:num], args.output_len,
                                                                        cache)
            row["transformers_tok_s"] = max(row[f"transformers_{c}_tok_s"] for c in TRANSFORMERS_CACHES)
            row["ratio"] = row["polyhead_tok_s"] / row["transformers_tok_s"]
        rows.append(row)
    rss = process_rss_bytes()

    group_note = f" (group size {args.group_size or 'channel'})" if args.quantization in ("int8", "int4") else ""
    print(f"\nmodel {args.model or 'SmolLM2-135M-Instruct'}, dtype {str(dtype).removeprefix('torch.')}, "
          f"quantization {args.quantization}"
          f"{group_note}, "
          f"{torch.get_num_threads()} threads, prompt {args.input_len} tokens, {args.output_len} new tokens, "
          f"{platform.processor() or platform.machine()}, {date.today()}")
    print("| sequences | polyhead tok/s | transformers tok/s (dynamic / static cache) | ratio to the better |")
    print("|---|---|---|---|")
    for row in rows:
        ref = (" / ".join(f"{row[f'transformers_{c}_tok_s']:.1f}" for c in TRANSFORMERS_CACHES)
               if "ratio" in row else "-")
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "-"
        print(f"| {row['concurrency']} | {row['polyhead_tok_s']:.1f} | {ref} | {ratio} |")
    print(f"process RSS after the run: {rss / 2**20:.0f} MiB"
          f"{' (transformers reference model included)' if reference is not None else ''}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args) | {"func": None}, "rows": rows, "rss_bytes": rss}, f, indent=2)
    return 0


def add_offline_parser(commands) -> None:
    p = commands.add_parser("offline", help="offline throughput vs transformers generate", description=DESCRIPTION)
    add_offline_arguments(p)


DESCRIPTION = ("Output tokens/s of polyhead's engine at several concurrency levels, next to "
               "transformers' generate on the same prompts, in the same run.")


def add_offline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model to measure (default: SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--quantization", default="auto", choices=["auto", "none", "int8", "int4"],
                   help="weight storage, as on engine commands (default: auto)")
    add_group_size_argument(p)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 32],
                   help="comma-separated sequence counts (default: 1,16,32)")
    p.add_argument("--input-len", type=int, default=32, help="prompt tokens (default: 32)")
    p.add_argument("--output-len", type=int, default=128, help="new tokens per sequence (default: 128)")
    p.add_argument("--kv-cache-memory", default="2GiB")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-transformers", action="store_true", help="measure polyhead only")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=run_offline)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m polyhead.bench.offline", description=DESCRIPTION)
    add_offline_arguments(parser)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
