"""Where a decode step's time goes: wall time per step split by layer kind, for N sequences.

Native kernels are invisible to torch's profiler, so this times the modules themselves
(everything runs synchronously on the CPU, so wall-clock spans are exact):

    python -m polyhead.bench.step_profile --sequences 32 --context 96
"""

import argparse
import time
from collections import Counter

from polyhead.bench.offline import make_prompts


def _timed(name: str, fn, totals: Counter):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        totals[name] += time.perf_counter() - start
        return result
    return wrapper


def profile_decode(sequences: int, context: int, steps: int, dtype: str, quantization: str = "auto"
                   ) -> dict[str, float]:
    from polyhead.engine.core.params import SamplingParams
    from polyhead.llm import LLM
    from polyhead.models import llama
    from polyhead.models.packed_linear import PackedLinear
    from polyhead.quant.linear import QuantizedEmbedding, QuantizedLinear

    llm = LLM(dtype=dtype, quantization=quantization, kv_cache_memory="1GiB", max_num_seqs=sequences)
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=context + steps, ignore_eos=True)
    for prompt in make_prompts(llm.tokenizer, sequences, 32, seed=0):
        engine.add_request(prompt, params)
    for _ in range(max(context - 32, 1)):  # prefill, then decode up to the context asked for
        engine.step()

    totals: Counter = Counter()
    patches = [(PackedLinear, "forward", "linear layers + LM head"),
               (QuantizedLinear, "forward", "quantized linear layers + LM head"),
               (QuantizedEmbedding, "forward", "quantized embedding"), (llama.RMSNorm, "forward", "rms norm"),
               (llama, "apply_rotary", "rotary"), (llama, "paged_attention", "attention (incl. cache writes)"),
               (llama.LlamaModel, "forward", "backbone total"), (engine.backend.runner, "execute", "runner total")]
    originals = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    for owner, attr, name in patches:
        setattr(owner, attr, _timed(name, getattr(owner, attr), totals))
    try:
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        totals["engine step"] = time.perf_counter() - start
    finally:
        for owner, attr, original in originals:
            setattr(owner, attr, original)
    return {name: seconds / steps * 1000 for name, seconds in totals.items()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m polyhead.bench.step_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--context", type=int, default=96, help="tokens per sequence when timing starts")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    parser.add_argument("--quantization", default="auto", choices=["auto", "none", "int8", "int4"])
    args = parser.parse_args()
    ms = profile_decode(args.sequences, args.context, args.steps, args.dtype, args.quantization)
    print(f"decode step, {args.sequences} sequences at ~{args.context} tokens of context (ms per step):")
    for name, value in sorted(ms.items(), key=lambda kv: -kv[1]):
        print(f"  {name:32s} {value:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
