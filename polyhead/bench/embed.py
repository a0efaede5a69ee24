"""Embedding throughput: polyhead's encoder engine vs sentence-transformers' `encode` on the
same seeded batch of short sentences, same model, same dtype, same process and threads.

    python -m polyhead.bench.embed --sentences 256 --words 12 --dtype bfloat16 --repeats 5
    python -m polyhead.bench.embed --profile     # where polyhead's time goes instead

Runs alternate (polyhead, then each sentence-transformers batch size) so a noisy neighbour
slows both sides alike; each figure is the median of the repeats. The embeddings of the two
are compared too (minimum cosine), so a fast wrong answer shows.
"""

import argparse
import random
import shlex
import statistics
import sys
import time

import torch

_WORD_LIST = ("the a one two red blue green small large quick slow old new happy sad city river mountain music "
         "book paper window garden market train station coffee morning evening friend teacher student "
         "doctor engine model data number signal memory system network question answer story picture "
         "runs walks reads writes sings builds opens closes finds keeps brings takes gives shows makes "
         "under over near beside after before during without with from into across through quietly "
         "quickly really almost never always often today yesterday tomorrow here there everywhere")
WORDS = _WORD_LIST.split()


def make_sentences(count: int, words: int, seed: int) -> list[str]:
    """`count` sentences of about `words` words each (±25%), reproducible from `seed`."""
    rng = random.Random(seed)
    spread = max(1, words // 4)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(words - spread, words + spread))).capitalize() + "."
            for _ in range(count)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--words", type=int, default=12)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--st-batch-sizes", default="32,256", help="sentence-transformers encode batch sizes")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="profile polyhead's run instead of comparing")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    from polyhead.llm import LLM

    sentences = make_sentences(args.sentences, args.words, args.seed)
    llm = LLM(model=args.model, dtype=args.dtype, max_num_batched_tokens=args.max_num_batched_tokens,
              max_num_seqs=max(args.sentences, 1))
    if args.profile:
        return profile(llm, sentences)
    st = SentenceTransformer(str(llm.engine.backend.model_folder), device="cpu",
                             model_kwargs={"dtype": getattr(torch, args.dtype)})
    st_sizes = [int(b) for b in args.st_batch_sizes.split(",")]
    num_tokens = sum(len(llm.tokenizer(s)["input_ids"]) for s in sentences)

    def run_polyhead():
        return torch.tensor([o.pooled for o in llm.embed(sentences)])

    def run_st(batch_size):
        return st.encode(sentences, batch_size=batch_size, convert_to_tensor=True).float()

    runs = {"polyhead": run_polyhead, **{f"sentence-transformers (batch {b})": (lambda b=b: run_st(b))
                                         for b in st_sizes}}
    results = {name: fn() for name, fn in runs.items()}  # warm-up, and the vectors to compare
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    reference = results[f"sentence-transformers (batch {st_sizes[0]})"]
    cosine = torch.nn.functional.cosine_similarity(results["polyhead"], reference, dim=-1).min().item()
    print(f"{args.sentences} sentences, {num_tokens} tokens ([CLS]/[SEP] included), {args.dtype}, "
          f"{torch.get_num_threads()} threads; min cosine polyhead vs sentence-transformers: {cosine:.6f}")
    print("| engine | embeddings/s | ms per batch |")
    print("|---|---|---|")
    figures = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        figures[name] = args.sentences / median
        print(f"| {name} | {figures[name]:.0f} | {median * 1000:.0f} |")
    print("command: python -m polyhead.bench.embed " + shlex.join(argv if argv is not None else sys.argv[1:]))
    return {"embeddings_per_s": figures, "min_cosine": cosine}


# torch profiler op names -> the part of the work they are
_PARTS = {"mkldnn::_linear_pointwise": "linear layers (oneDNN, packed; GELU fused into the up-projection)",
          "aten::_scaled_dot_product_flash_attention_for_cpu": "attention (SDPA)",
          "aten::native_layer_norm": "LayerNorm", "aten::add": "residual adds", "aten::add_": "residual adds",
          "aten::embedding": "embeddings", "aten::index_select": "gathers (embeddings, unpadding)",
          "aten::index_copy_": "padding within attention buckets", "aten::copy_": "copies",
          "aten::index_add_": "pooling", "aten::zero_": "padding within attention buckets",
          "aten::fill_": "padding within attention buckets"}


def profile(llm, sentences: list[str]) -> dict:
    """One embed() of the batch under torch.profiler: time by part, plus tokenizing (measured
    apart) and what is left (Python: engine, scheduling, outputs)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    llm.embed(sentences)  # warm-up
    start = time.perf_counter()
    for i, sentence in enumerate(sentences):
        llm.engine.prepare(sentence, None, f"tok-{i}")
    tokenize_s = time.perf_counter() - start
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        llm.embed(sentences)
        wall_s = time.perf_counter() - start
    parts: dict[str, float] = {"tokenizing and validating (measured apart)": tokenize_s}
    for event in prof.key_averages():
        part = _PARTS.get(event.key)
        if part is not None:
            parts[part] = parts.get(part, 0.0) + event.self_cpu_time_total / 1e6
    parts["the rest (Python: engine, pooling, outputs; small ops)"] = max(0.0, wall_s - sum(parts.values()))
    print(f"{len(sentences)} sentences in {wall_s * 1000:.0f} ms, {torch.get_num_threads()} threads")
    print("| part | ms | share |")
    print("|---|---|---|")
    for part, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {seconds * 1000:.0f} | {seconds / wall_s:.0%} |")
    print("command: python -m polyhead.bench.embed " + shlex.join(sys.argv[1:]))
    return parts


if __name__ == "__main__":
    main()
