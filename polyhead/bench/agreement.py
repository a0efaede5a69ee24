"""Greedy agreement of an engine config with float32: for each of a fixed list of varied prompts,
both generate `--tokens` tokens greedily (EOS ignored, so every row has the full length), and the
figure is the length of the common prefix of the two token-id sequences: mean, min and median over
the prompts. The reference is the same model in float32 with every weight dequantized
(`--quantization none`), unless `--reference-model` names another.
"""

import json
import statistics
import time
from dataclasses import asdict, dataclass

from polyhead.bench.perplexity import command_line
from polyhead.quant.flags import add_group_size_argument

# Varied on purpose: questions, instructions, code, lists, continuations, a translation, arithmetic.
PROMPTS = [
    "What is the capital of Australia, and why is it not Sydney?",
    "Write a short poem about a lighthouse keeper.",
    "Explain in two sentences how a refrigerator keeps food cold.",
    "Give me three tips for learning to play the guitar.",
    "Write a Python function that returns the largest of three numbers.",
    "Translate into French: The train leaves at eight o'clock.",
    "What is 17 multiplied by 23? Show your working.",
    "Summarize the story of Cinderella in one paragraph.",
    "List five vegetables that grow well in a cold climate.",
    "Why is the sky blue?",
    "Continue the story: The door at the end of the corridor was open.",
    "Describe the taste of a lemon to someone who has never had one.",
    "What are the main differences between a cat and a dog as pets?",
    "Write an email asking a colleague to move a meeting to Friday.",
    "How do I boil an egg so that the yolk stays soft?",
    "Name three planets of the solar system and one fact about each.",
    "What does a database index do?",
    "Give a recipe for a simple tomato soup.",
    "Explain what a verb is, with two examples.",
    "Tell me a joke about a penguin.",
    "What should I pack for a weekend of hiking in the rain?",
    "Write a haiku about winter mornings.",
    "How does a bicycle stay upright when it moves?",
    "Suggest a name for a bakery by the sea, and say why.",
]


@dataclass(slots=True)
class AgreementResult:
    prefix_lengths: list[int]  # per prompt: leading tokens the candidate shares with the reference
    num_tokens: int  # tokens generated per prompt (the most a prefix can be)
    mean: float
    min: int
    median: float
    num_identical: int  # prompts whose whole generation matches


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare(reference: list[list[int]], candidate: list[list[int]], num_tokens: int) -> AgreementResult:
    lengths = [common_prefix(r, c) for r, c in zip(reference, candidate, strict=True)]
    return AgreementResult(lengths, num_tokens, statistics.fmean(lengths), min(lengths), statistics.median(lengths),
                           sum(n == num_tokens for n in lengths))


def make_prompts(llm, num: int, raw: bool) -> list[str | list[int]]:
    if not 1 <= num <= len(PROMPTS):
        raise ValueError(f"--prompts must be between 1 and {len(PROMPTS)}, got {num}")
    if raw or not getattr(llm.tokenizer, "chat_template", None):
        return PROMPTS[:num]
    return [llm.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS[:num]]


def generate_greedy(config, num_prompts: int, num_tokens: int, raw: bool) -> list[list[int]]:
    from polyhead.engine.core.params import SamplingParams
    from polyhead.llm import LLM

    llm = LLM.from_config(config)
    params = SamplingParams(temperature=0.0, max_tokens=num_tokens, ignore_eos=True)
    outs = llm.generate(make_prompts(llm, num_prompts, raw), params)
    return [list(out.token_ids) for out in outs]


def run_agreement(args) -> int:
    import gc

    from polyhead.config import EngineConfig

    common = {"kv_cache_memory": args.kv_cache_memory, "max_num_seqs": args.prompts, "num_threads": args.threads}
    reference_config = EngineConfig(model=args.reference_model or args.model, dtype="float32", quantization="none",
                                    **common)
    config = EngineConfig(model=args.model, dtype=args.dtype, quantization=args.quantization,
                          quantization_group_size=args.group_size, **common)
    start = time.perf_counter()
    reference = generate_greedy(reference_config, args.prompts, args.tokens, args.raw)
    gc.collect()  # one model in memory at a time
    candidate = generate_greedy(config, args.prompts, args.tokens, args.raw)
    result = compare(reference, candidate, args.tokens)
    elapsed = time.perf_counter() - start
    command = command_line("polyhead bench agreement", args, ("model", "dtype", "quantization", "group_size",
                                                              "reference_model", "prompts", "tokens", "threads"))
    command += " --raw" if args.raw else ""
    print(f"greedy agreement with float32: mean common prefix {result.mean:.1f} of {args.tokens} tokens "
          f"(min {result.min}, median {result.median:g}), {result.num_identical} of {args.prompts} prompts "
          f"identical; {args.model or 'SmolLM2-135M-Instruct'}, dtype {str(config.torch_dtype).removeprefix('torch.')},"
          f" quantization {args.quantization}, {elapsed:.1f} s")
    print(f"command: {command}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args) | {"func": None}, "command": command, "seconds": elapsed}
                      | asdict(result), f, indent=2)
    return 0


def add_agreement_parser(commands) -> None:
    p = commands.add_parser("agreement", help="greedy agreement of a config with float32 (common prefix)",
                            description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model to measure (default: SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--quantization", default="auto", choices=["auto", "none", "int8", "int4"])
    add_group_size_argument(p)
    p.add_argument("--reference-model", default=None,
                   help="the float32 reference's model (default: --model; e.g. the unpruned model for a pruned one)")
    p.add_argument("--prompts", type=int, default=20, help=f"prompts, at most {len(PROMPTS)} (default: 20)")
    p.add_argument("--tokens", type=int, default=64, help="greedy tokens per prompt (default: 64)")
    p.add_argument("--raw", action="store_true", help="send the prompts without the chat template")
    p.add_argument("--kv-cache-memory", default="512MiB")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=run_agreement)
