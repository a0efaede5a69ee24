"""The cost of structured output: output tokens/s of constrained vs free sequences at each
concurrency level (same prompts, same run), and the compile time of a 20-field JSON schema.

The constrained sequences follow a grammar they cannot finish (an unclosed JSON array of strings,
EOS ignored), so every sequence, constrained or free, generates exactly `output_len` tokens and the
two figures differ only by the grammar's work: a mask per row per step, applied in the sampler.
"""

import argparse
import json
import platform
import statistics
import time
from datetime import date

# a JSON array of strings that never closes: the per-token work of JSON string content and separators
ENDLESS_JSON_ARRAY = 'start: "[" item (", " item)*\nitem: /"[a-zA-Z0-9 .,]{0,40}"/'
FIELD_TYPES = ({"type": "string", "maxLength": 32}, {"type": "integer", "minimum": 0, "maximum": 10000},
               {"type": "number"}, {"type": "boolean"}, {"enum": ["low", "medium", "high"]})


def twenty_field_schema() -> dict:
    """A 20-field object schema: strings, bounded integers, numbers, booleans and enums, all required."""
    properties = {f"field_{i}": FIELD_TYPES[i % len(FIELD_TYPES)] for i in range(20)}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def twenty_field_instance() -> dict:
    """A document valid under twenty_field_schema, to drive matchers through."""
    values = ("some text", 42, 3.5, True, "medium")
    return {f"field_{i}": values[i % len(values)] for i in range(20)}


def bench_generate(llm, prompts, output_len: int, structured) -> float:
    from polyhead.engine.core.params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True, structured=structured)
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(o.token_ids) == output_len for o in outs), [len(o.token_ids) for o in outs]
    return len(prompts) * output_len / elapsed


def compile_seconds(backend, num_trials: int) -> tuple[float, float]:
    """Median seconds to compile the 20-field schema (a fresh cache each trial), and to compile it
    and compute its first mask (llguidance builds its lexer lazily, so the first mask pays part)."""
    from polyhead.engine.core.params import StructuredOutput
    from polyhead.engine.core.request import Request
    from polyhead.engine.decoder.grammar import GrammarManager

    structured = StructuredOutput("json", json.dumps(twenty_field_schema()))
    compiles, firsts = [], []
    grammars = GrammarManager(backend.tokenizer, backend.model_config.vocab_size, backend.eos_token_ids)
    grammars.wait_compiled(StructuredOutput("regex", "warm"))  # the tokenizer's conversion, once per backbone
    for trial in range(num_trials):
        grammars.clear_cache()
        start = time.perf_counter()
        grammars.wait_compiled(structured)
        compiles.append(time.perf_counter() - start)
        request = Request(f"bench-{trial}", [0], _params(structured), frozenset())
        assert grammars.is_ready(request)
        grammars.allowed_tokens([request])
        firsts.append(time.perf_counter() - start)
        grammars.release(request.req_id)
    return statistics.median(compiles), statistics.median(firsts)


def _params(structured):
    from polyhead.engine.core.params import SamplingParams

    return SamplingParams(max_tokens=1, structured=structured)


def run_structured(args) -> int:
    import torch

    from polyhead.bench.offline import make_prompts
    from polyhead.config import EngineConfig
    from polyhead.engine.core.params import StructuredOutput
    from polyhead.llm import LLM

    if args.threads:
        torch.set_num_threads(args.threads)
    config = EngineConfig(model=args.model, dtype=args.dtype, max_num_seqs=max(args.concurrency),
                          kv_cache_memory=args.kv_cache_memory, num_threads=args.threads)
    llm = LLM.from_config(config)
    prompts = make_prompts(llm.tokenizer, max(args.concurrency), args.input_len, args.seed)
    grammar = StructuredOutput("grammar", ENDLESS_JSON_ARRAY)
    bench_generate(llm, prompts[:2], 8, None)  # warm-up: allocations, thread pools
    bench_generate(llm, prompts[:2], 8, grammar)  # and the grammar's compile
    rows = []
    for num in args.concurrency:
        free = bench_generate(llm, prompts[:num], args.output_len, None)
        constrained = bench_generate(llm, prompts[:num], args.output_len, grammar)
        rows.append({"sequences": num, "free_tok_s": free, "constrained_tok_s": constrained,
                     "ratio": constrained / free})
    compile_s, first_mask_s = compile_seconds(llm.engine.backend, args.compile_trials)

    print(f"\nmodel {args.model or 'SmolLM2-135M-Instruct'}, dtype {str(config.torch_dtype).removeprefix('torch.')}, "
          f"{torch.get_num_threads()} threads, prompt {args.input_len} tokens, {args.output_len} new tokens, "
          f"greedy, {platform.processor() or platform.machine()}, {date.today()}")
    print("| sequences | free tok/s | constrained tok/s | constrained / free |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['sequences']} | {row['free_tok_s']:.1f} | {row['constrained_tok_s']:.1f} | {row['ratio']:.2f} |")
    print(f"20-field JSON schema: compile {compile_s * 1e3:.2f} ms, compile + first mask "
          f"{first_mask_s * 1e3:.2f} ms (median of {args.compile_trials})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args) | {"func": None}, "rows": rows, "compile_s": compile_s,
                       "compile_and_first_mask_s": first_mask_s}, f, indent=2)
    return 0


DESCRIPTION = ("Output tokens/s of constrained (grammar) vs free sequences at each concurrency level, "
               "same run, and the compile time of a 20-field JSON schema.")


def add_structured_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model to measure (default: SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32],
                   help="comma-separated sequence counts (default: 1,32)")
    p.add_argument("--input-len", type=int, default=32, help="prompt tokens (default: 32)")
    p.add_argument("--output-len", type=int, default=128, help="new tokens per sequence (default: 128)")
    p.add_argument("--compile-trials", type=int, default=20, help="compiles of the 20-field schema (default: 20)")
    p.add_argument("--kv-cache-memory", default="2GiB")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=run_structured)


def add_structured_parser(commands) -> None:
    p = commands.add_parser("structured", help="cost of structured output: constrained vs free tok/s, compile time",
                            description=DESCRIPTION)
    add_structured_arguments(p)
