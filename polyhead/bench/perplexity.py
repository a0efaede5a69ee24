"""Perplexity on a held-out text, computed the way llama.cpp's `llama-perplexity` computes it
(tools/perplexity/perplexity.cpp), through polyhead's serving model.

The rule it keeps: the text is tokenized once (BOS first if the tokenizer adds one), cut into
len // n_ctx chunks of n_ctx tokens (the tail is dropped), each chunk is scored on its own from an
empty cache with its first token replaced by BOS when the tokenizer adds one, and only the second
half is scored: the logits at positions n_ctx / 2 .. n_ctx - 2 predict the tokens after them.
Perplexity is exp(total negative log-likelihood / tokens scored).
"""

import argparse
import json
import math
import shlex
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from polyhead.quant.flags import add_group_size_argument

HELDOUT = "heldout.txt"  # polyhead/bench/data: ~5,100 tokens of plain English prose written for the project


@dataclass(slots=True)
class PerplexityResult:
    perplexity: float
    nll: float  # summed negative log-likelihood, nats
    num_scored: int  # tokens scored: num_chunks * (n_ctx - n_ctx // 2 - 1)
    num_chunks: int
    num_tokens: int  # tokens of the whole text (BOS included when added)
    n_ctx: int
    add_bos: bool


def load_text(path: str | None = None) -> str:
    """The text llama-perplexity would read from `-f path`: one trailing newline dropped."""
    text = Path(path).read_text() if path else resources.files("polyhead.bench").joinpath("data", HELDOUT).read_text()
    return text.removesuffix("\n")


def tokenizer_adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer.encode("a")[:1] == [bos] != tokenizer.encode("a", add_special_tokens=False)[:1]


def tokenize(tokenizer, text: str, add_bos: bool) -> list[int]:
    return ([tokenizer.bos_token_id] if add_bos else []) + tokenizer.encode(text, add_special_tokens=False)


def chunks(token_ids: list[int], n_ctx: int, bos_id: int | None) -> list[list[int]]:
    """The chunks llama-perplexity scores; bos_id: the token put first in each (None: leave them)."""
    if len(token_ids) < 2 * n_ctx:
        raise ValueError(f"the text has {len(token_ids)} tokens; perplexity at --ctx {n_ctx} needs at least "
                         f"{2 * n_ctx}")
    out = [token_ids[start:start + n_ctx] for start in range(0, len(token_ids) // n_ctx * n_ctx, n_ctx)]
    return [[bos_id] + chunk[1:] for chunk in out] if bos_id is not None else out


def perplexity(score, token_ids: list[int], n_ctx: int, bos_id: int | None) -> PerplexityResult:
    """`score(chunk, first)` -> log-probs of chunk[first + 1:] given what precedes (engine.scoring)."""
    first, nll, count = n_ctx // 2, 0.0, 0
    pieces = chunks(token_ids, n_ctx, bos_id)
    for chunk in pieces:
        log_probs = score(chunk, first)
        nll -= log_probs.double().sum().item()
        count += len(log_probs)
    return PerplexityResult(math.exp(nll / count), nll, count, len(pieces), len(token_ids), n_ctx, bos_id is not None)


def command_line(prefix: str, args, names: tuple[str, ...]) -> str:
    """The command that reproduces a run: every option in `names` that is set, spelled out."""
    values = {name: getattr(args, name) for name in names}
    if "group_size" in values and values["group_size"] is None:
        values["group_size"] = "channel"  # None means one scale per output channel
    options = [f"--{name.replace('_', '-')} {shlex.quote(str(value))}" for name, value in values.items()
               if value is not None]
    return " ".join([prefix, *options])


def run_perplexity(args) -> int:
    import torch

    from polyhead.bench.memory import model_tensor_bytes
    from polyhead.config import EngineConfig
    from polyhead.engine.decoder.scoring import next_token_logprobs
    from polyhead.llm import LLM

    if args.threads:
        torch.set_num_threads(args.threads)
    config = EngineConfig(model=args.model, dtype=args.dtype, quantization=args.quantization,
                          quantization_group_size=args.group_size, kv_cache_memory="16MiB", max_num_seqs=1,
                          num_threads=args.threads)
    llm = LLM.from_config(config)
    runner = llm.engine.backend.runner
    add_bos = tokenizer_adds_bos(llm.tokenizer)
    token_ids = tokenize(llm.tokenizer, load_text(args.text), add_bos)
    start = time.perf_counter()
    result = perplexity(lambda chunk, first: next_token_logprobs(runner, chunk, first), token_ids, args.ctx,
                        llm.tokenizer.bos_token_id if add_bos else None)
    elapsed = time.perf_counter() - start
    weight_bytes = model_tensor_bytes(runner.model)
    command = command_line("polyhead bench perplexity", args, ("model", "dtype", "quantization", "group_size",
                                                               "text", "ctx", "threads"))
    print(f"perplexity {result.perplexity:.4f} over {result.num_scored} tokens ({result.num_chunks} chunks of "
          f"{result.n_ctx}, {result.num_tokens} tokens in the text, BOS {'added' if add_bos else 'not added'}); "
          f"{args.model or 'SmolLM2-135M-Instruct'}, dtype {str(config.torch_dtype).removeprefix('torch.')}, "
          f"quantization {args.quantization}, model tensors {weight_bytes / 1e6:.1f} MB, {elapsed:.1f} s")
    print(f"command: {command}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args) | {"func": None}, "command": command, "seconds": elapsed,
                       "weight_bytes": weight_bytes,
                       "text": args.text or f"polyhead/bench/data/{HELDOUT}"} | asdict(result), f, indent=2)
    return 0


def add_perplexity_parser(commands) -> None:
    p = commands.add_parser("perplexity", help="perplexity on a held-out text, llama-perplexity's way",
                            description=__doc__.split("\n\n")[0])
    add_perplexity_arguments(p)


def add_perplexity_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model to measure (default: SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--quantization", default="auto", choices=["auto", "none", "int8", "int4"])
    add_group_size_argument(p)
    p.add_argument("--text", default=None, help="a UTF-8 text file (default: the shipped held-out text)")
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk, llama-perplexity's -c (default: 512)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=run_perplexity)
