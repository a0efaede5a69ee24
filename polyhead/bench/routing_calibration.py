"""The step-time model the routing simulation runs on: step_s = a + b * prefill_tokens + c * decode_rows,
a least-squares fit of the real engine's measured steps on this machine (`polyhead bench routing --calibrate`).

Each point times one engine step holding `k` decode rows and one prefill chunk of `p` tokens: k requests
are started and brought to decoding, then a fresh prompt of p random tokens (so no prefix-cache hit) is
added with max_tokens=1, and the next step computes exactly the k decodes and that chunk.
"""

import json
import os
import platform
import random
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import date
from importlib import resources

DEFAULT_CALIBRATION = "routing_step_time.json"  # in polyhead/bench/data/
DECODE_ROWS = (0, 1, 8, 32, 64)
PREFILL_TOKENS = (0, 32, 128, 256, 448)


@dataclass(slots=True)
class StepTimeModel:
    """Seconds one engine step takes, linear in what it computes."""

    base_s: float  # a: a step's fixed cost (scheduling, the forward's launch, the LM head's weights)
    per_prefill_token_s: float  # b: each prompt token computed in the step
    per_decode_row_s: float  # c: each decode row (one token, attention over its context)
    adapter_load_s: float = 0.05  # loading a LoRA adapter that is not resident (assumed, not fitted)

    def step_s(self, prefill_tokens: int, decode_rows: int) -> float:
        return self.base_s + self.per_prefill_token_s * prefill_tokens + self.per_decode_row_s * decode_rows


def fit(points: list[tuple[int, int, float]]) -> tuple[float, float, float]:
    """Least squares of seconds = a + b * prefill + c * decode over (prefill, decode, seconds) points."""
    import numpy as np

    x = np.array([[1.0, p, k] for p, k, _ in points])
    y = np.array([s for _, _, s in points])
    (a, b, c), *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(a), float(b), float(c)


def load_calibration(path: str | None = None) -> StepTimeModel:
    """The model in `path`, or the one measured on the project's machine and shipped with polyhead."""
    if path is None:
        text = resources.files("polyhead.bench").joinpath("data", DEFAULT_CALIBRATION).read_text()
    else:
        with open(path) as f:
            text = f.read()
    fields = json.loads(text)["model"]
    return StepTimeModel(**fields)


def _cpu_description() -> dict:
    model = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                      if line.startswith("Model name")), model)
    except OSError:
        pass
    from polyhead.cpu import cpu_features

    flags = cpu_features().flags
    return {"cpu": model, "cpu_count": os.cpu_count(),
            "isa": sorted(f for f in flags if f == "avx2" or f.startswith("avx512"))}


def _time_step(engine, decode_rows: int, prefill_tokens: int, rng: random.Random, vocab: int) -> float:
    from polyhead.engine.core.params import SamplingParams

    decode_params = SamplingParams(temperature=0.0, max_tokens=10_000, ignore_eos=True)
    ids = [engine.add_request([rng.randrange(100, vocab) for _ in range(8)], decode_params)
           for _ in range(decode_rows)]
    for _ in range(3):  # their prompts computed: every one of them is decoding now
        engine.step()
    if prefill_tokens:
        prompt = [rng.randrange(100, vocab) for _ in range(prefill_tokens)]
        engine.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
    start = time.perf_counter()
    engine.step()
    elapsed = time.perf_counter() - start
    for req_id in ids:
        engine.abort_request(req_id)
    while engine.has_unfinished_requests():
        engine.step()
    return elapsed


def calibrate(out_path: str, repeats: int = 3, model: str | None = None, threads: int | None = None) -> StepTimeModel:
    """Measure the engine's step times over a grid of (decode rows, prefill tokens), fit, write JSON."""
    import torch

    from polyhead.llm import LLM

    if threads:
        torch.set_num_threads(threads)
    llm = LLM(model=model, kv_cache_memory="1GiB", max_num_seqs=max(DECODE_ROWS) + 1,
              max_num_batched_tokens=max(DECODE_ROWS) + max(PREFILL_TOKENS))
    engine = llm.engine
    vocab = min(len(llm.tokenizer), 40_000)
    rng = random.Random(0)
    _time_step(engine, 4, 64, rng, vocab)  # warm-up: allocations, thread pools
    points = []
    for k in DECODE_ROWS:
        for p in PREFILL_TOKENS:
            if k == 0 and p == 0:
                continue
            seconds = statistics.median(_time_step(engine, k, p, rng, vocab) for _ in range(repeats))
            points.append((p, k, seconds))
            print(f"  decode rows {k:3d}, prefill tokens {p:4d}: {seconds * 1e3:7.1f} ms", flush=True)
    a, b, c = fit(points)
    result = StepTimeModel(a, b, c)
    record = {"model": asdict(result), "points": [{"prefill_tokens": p, "decode_rows": k, "step_s": s}
                                                  for p, k, s in points],
              "engine": {"model": model or "SmolLM2-135M-Instruct", "threads": torch.get_num_threads()},
              "machine": _cpu_description() | {"date": str(date.today())},
              "note": "adapter_load_s is assumed, not measured"}
    with open(out_path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"step_s = {a * 1e3:.2f} ms + {b * 1e3:.3f} ms x prefill tokens + {c * 1e3:.3f} ms x decode rows "
          f"-> {out_path}")
    return result
