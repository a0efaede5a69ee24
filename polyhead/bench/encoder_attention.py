"""Ways to run bidirectional attention over a flat ragged batch of short sentences, timed on
one layer's q|k|v (all-MiniLM-L6-v2's shape: 12 heads of 32) for the seeded sentences of
polyhead.bench.embed. All give the same result (checked); they differ in work and call count.

    python -m polyhead.bench.encoder_attention --sentences 256 --dtype bfloat16 --threads 1
"""

import argparse
import shlex
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from polyhead.bench.embed import make_sentences
from polyhead.models.bert import BUCKET_MIN_FILL, attention_buckets, ragged_attention

NUM_HEADS, HEAD_DIM = 12, 32


def variants(qkv: torch.Tensor, lens: list[int]) -> dict:
    """lens: sequence lengths, longest first, as the runner lays them out. Each variant maps
    qkv [T, 3 * heads * D] -> [T, heads * D]."""
    total, h, d, scale = qkv.shape[0], NUM_HEADS, HEAD_DIM, HEAD_DIM ** -0.5
    groups = _equal_length_runs(lens)

    def split(rows, count, length):  # -> 3 x [count, heads, length, D] views
        return rows.view(count, length, 3, h, d).permute(2, 0, 3, 1, 4)

    def grouped(attend):
        def run():
            out = qkv.new_empty(total, h * d)
            for start, count, length in groups:
                rows = slice(start, start + count * length)
                out[rows].view(count, length, h, d).copy_(attend(*split(qkv[rows], count, length)).transpose(1, 2))
            return out
        return run

    def matmul(q, k, v):
        return (q @ k.transpose(-1, -2)).mul_(scale).softmax(-1) @ v

    def per_sequence():
        out, row = qkv.new_empty(total, h * d), 0
        for length in lens:
            o = F.scaled_dot_product_attention(*split(qkv[row:row + length], 1, length))
            out[row:row + length] = o.transpose(1, 2).reshape(length, -1)
            row += length
        return out

    longest, count = lens[0], len(lens)
    slot = torch.cat([torch.arange(n) + i * longest for i, n in enumerate(lens)])  # flat row -> padded row
    key_mask = (torch.arange(longest)[None, :] < torch.tensor(lens)[:, None])[:, None, None, :]  # [B, 1, 1, L]

    def padded():
        padded_qkv = qkv.new_zeros(count * longest, qkv.shape[1])
        padded_qkv[slot] = qkv
        o = F.scaled_dot_product_attention(*split(padded_qkv, count, longest), attn_mask=key_mask)
        return o.transpose(1, 2).reshape(count * longest, -1)[slot]

    seq = torch.repeat_interleave(torch.arange(count), torch.tensor(lens))
    block_mask = seq[:, None] == seq[None, :]  # [T, T]

    def block_diagonal():
        o = F.scaled_dot_product_attention(*split(qkv, 1, total), attn_mask=block_mask)
        return o.transpose(1, 2).reshape(total, -1)

    buckets = attention_buckets(lens)
    return {f"buckets of similar length (>= {BUCKET_MIN_FILL:.0%} of their longest), padded, SDPA (polyhead)":
            lambda: ragged_attention(qkv, buckets, h, d),
            "runs of equal length, SDPA (flash kernel)": grouped(F.scaled_dot_product_attention),
            "runs of equal length, batched matmuls": grouped(matmul),
            "one SDPA call per sequence": per_sequence,
            "padded to the longest + key mask, one SDPA call": padded,
            "whole batch, block-diagonal mask, one SDPA call": block_diagonal}


def _equal_length_runs(lens: list[int]) -> list[tuple[int, int, int]]:
    """(first row, sequences, length) for each run of equal-length neighbours."""
    runs, row = [], 0
    for length in lens:
        if runs and runs[-1][2] == length:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, length)
        else:
            runs.append((row, 1, length))
        row += length
    return runs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--words", type=int, default=12)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from polyhead.models.registry import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    sentences = make_sentences(args.sentences, args.words, args.seed)
    lens = sorted((len(tokenizer(s)["input_ids"]) for s in sentences), reverse=True)
    qkv = torch.randn(sum(lens), 3 * NUM_HEADS * HEAD_DIM, generator=torch.Generator().manual_seed(args.seed))
    qkv = qkv.to(getattr(torch, args.dtype))
    runs = variants(qkv, lens)
    reference = runs["one SDPA call per sequence"]().float()
    for name, run in runs.items():
        torch.testing.assert_close(run().float(), reference, atol=3e-2, rtol=3e-2, msg=name)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so a noisy neighbour slows every variant alike
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    print(f"{len(lens)} sequences, {sum(lens)} tokens, {len(_equal_length_runs(lens))} distinct lengths, "
          f"{len(attention_buckets(lens))} buckets "
          f"(longest {lens[0]}), {args.dtype}, {torch.get_num_threads()} threads, one layer")
    print("| attention over the ragged batch | ms (median) |")
    print("|---|---|")
    figures = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
    for name, ms in figures.items():
        print(f"| {name} | {ms:.1f} |")
    args_given = argv if argv is not None else sys.argv[1:]
    print("command: python -m polyhead.bench.encoder_attention " + shlex.join(args_given))
    return figures


if __name__ == "__main__":
    main()
