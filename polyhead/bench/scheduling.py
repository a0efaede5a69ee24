"""What the scheduling policies do on the real engine (docs/scheduling.md), seeded:

1. fair share: a heavy tenant sends 10x the requests of a light one, all at once; per policy,
   the light tenant's mean and last completion time, and each tenant's tokens served while
   both had requests waiting.
2. the pooling reserve: an embed request arrives while a long prompt is being prefilled; its
   latency with and without the reserve, and what the reserve costs the long prompt.

    python -m polyhead.bench.scheduling --dtype bfloat16
"""

import argparse
import random
import time

from polyhead.bench.offline import make_prompts


def fair_share(policy: str, dtype: str, num_light: int, prompt_len: int, max_tokens: int, seed: int) -> dict:
    from polyhead.engine.core.params import SamplingParams
    from polyhead.llm import LLM

    llm = LLM(dtype=dtype, kv_cache_memory="256MiB", max_num_seqs=8, max_num_batched_tokens=256, policy=policy)
    engine = llm.engine
    prompts = make_prompts(llm.tokenizer, 11 * num_light, prompt_len, seed=seed)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    tenant_of = {}
    for i, prompt in enumerate(prompts):  # interleaved: 10 heavy, 1 light, 10 heavy, ...
        tenant = "light" if i % 11 == 10 else "heavy"
        tenant_of[engine.add_request(prompt, params, tenant=tenant)] = tenant
    served = {"heavy": 0, "light": 0}
    done: dict[str, list[float]] = {"heavy": [], "light": []}
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        contended = {r.tenant for r in engine.backend.scheduler.waiting} >= {"heavy", "light"}
        for out in engine.step():
            if contended:
                served[tenant_of[out.req_id]] += len(out.new_token_ids)
            if out.finished:
                done[tenant_of[out.req_id]].append(time.perf_counter() - start)
    light = done["light"]
    return {"policy": policy, "light_mean_s": sum(light) / len(light), "light_last_s": max(light),
            "all_done_s": max(done["heavy"] + light), "tokens_while_contended": served}


def pooling_reserve(reserve: int, dtype: str, long_len: int, seed: int) -> dict:
    from polyhead.engine.core.params import PoolingParams, SamplingParams
    from polyhead.llm import LLM

    llm = LLM(dtype=dtype, kv_cache_memory="256MiB", max_num_batched_tokens=256, pooling_token_budget=reserve)
    engine = llm.engine
    rng = random.Random(seed)
    long_prompt = [rng.randrange(1000, 20000) for _ in range(long_len)]
    engine.add_request(long_prompt, SamplingParams(temperature=0.0, max_tokens=1), req_id="long")
    start = time.perf_counter()
    engine.step()  # the long prompt's first chunk
    embed_at = time.perf_counter()
    engine.add_request("What is the capital of France?", PoolingParams(kind="embed"), req_id="embed")
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.req_id] = time.perf_counter()
    return {"reserve": reserve, "embed_latency_s": finished["embed"] - embed_at,
            "long_prompt_s": finished["long"] - start}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m polyhead.bench.scheduling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-light", type=int, default=4, help="light tenant's requests; heavy sends 10x")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--long-len", type=int, default=1536, help="the long prompt of the reserve test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("fair share (heavy tenant sends 10x the light one's requests, all at t=0):")
    for policy in ("fcfs", "fair"):
        r = fair_share(policy, args.dtype, args.num_light, args.prompt_len, args.max_tokens, args.seed)
        print(f"  {policy:5s} light mean {r['light_mean_s']:.2f} s, light last {r['light_last_s']:.2f} s, "
              f"all done {r['all_done_s']:.2f} s, output tokens while both waited {r['tokens_while_contended']}")
    print(f"embed request arriving during a {args.long_len}-token prefill (budget 256 tokens/step):")
    for reserve in (0, 64):
        r = pooling_reserve(reserve, args.dtype, args.long_len, args.seed)
        print(f"  pooling_token_budget {reserve:2d}: embed latency {r['embed_latency_s']:.3f} s, "
              f"long prompt done in {r['long_prompt_s']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
