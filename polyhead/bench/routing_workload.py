"""The requests `polyhead bench routing` replays: seeded, synthetic token ids (the prefix cache and the
routers only see hashes, or one character per token for Ray's text-based prefix tree).

- shared-prefix: 64 apps, each a system prompt of 200-600 tokens with its own adapter (half of them
  base weights, the rest one of 50 LoRA adapters), Zipf-popular; a user turn of 20-100 tokens; all
  generate, 32-256 output tokens.
- mixed: 16 system prompts and 50 adapters drawn independently (Zipf each); 60% generate, 25% classify
  and 15% embed rows, which are prefill-only (a short task template and the user text).
- unique: no shared prefix at all, base weights, generate: where affinity can only cost.
Arrivals are open-loop Poisson at `rate` requests/s.
"""

import random
from dataclasses import dataclass, field

from polyhead.deploy.routing import ROUTED_BLOCKS
from polyhead.engine.core.block_hash import block_hashes

WORKLOADS = ("shared-prefix", "mixed", "unique")
NUM_ADAPTERS = 50
VOCAB = 40_000


@dataclass(slots=True)
class SimRequest:
    """One simulated request and, once it has run, what happened to it."""

    req_id: int
    arrival_s: float
    token_ids: list[int]
    num_output_tokens: int  # 0 for pooling rows (classify / embed): prefill only
    adapter: str | None
    task: str  # generate | classify | embed
    block_hashes: list[int] = field(default_factory=list)  # every full block of the prompt (the replica's cache)
    replica: int = -1
    num_cached_tokens: int = 0  # prompt tokens found in the replica's prefix cache
    first_token_s: float | None = None
    finish_s: float | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def routed_hashes(self) -> list[int]:
        return self.block_hashes[:ROUTED_BLOCKS]

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s


def _zipf_weights(n: int, s: float = 1.0) -> list[float]:
    return [1.0 / (i + 1) ** s for i in range(n)]


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(100, VOCAB) for _ in range(n)]


def make_workload(name: str, num_requests: int, rate: float, seed: int, block_size: int = 16) -> list[SimRequest]:
    if name not in WORKLOADS:
        raise ValueError(f"--workload must be one of {', '.join(WORKLOADS)}, not {name!r}")
    rng = random.Random(seed)
    adapters = [f"lora-{i:02d}" for i in range(NUM_ADAPTERS)]
    adapter_weights = _zipf_weights(NUM_ADAPTERS)
    num_prompts = 64 if name == "shared-prefix" else 16
    system_prompts = [_tokens(rng, rng.randint(200, 600)) for _ in range(num_prompts)]
    prompt_weights = _zipf_weights(num_prompts)
    app_adapters = [None if i % 2 == 0 else rng.choices(adapters, adapter_weights)[0] for i in range(num_prompts)]
    templates = {"classify": _tokens(rng, 24), "embed": _tokens(rng, 8)}
    requests, now = [], 0.0
    for req_id in range(num_requests):
        now += rng.expovariate(rate)
        user = _tokens(rng, rng.randint(20, 100))
        task, output = "generate", rng.randint(32, 256)
        if name == "shared-prefix":
            app = rng.choices(range(num_prompts), prompt_weights)[0]
            prompt, adapter = system_prompts[app] + user, app_adapters[app]
        elif name == "mixed":
            task = rng.choices(("generate", "classify", "embed"), (0.60, 0.25, 0.15))[0]
            adapter = rng.choices(adapters, adapter_weights)[0] if rng.random() < 0.7 else None
            if task == "generate":
                prompt = system_prompts[rng.choices(range(num_prompts), prompt_weights)[0]] + user
            else:
                prompt, output = templates[task] + user, 0
        else:
            prompt, adapter = _tokens(rng, rng.randint(220, 700)), None
        request = SimRequest(req_id, now, prompt, output, adapter, task)
        request.block_hashes = block_hashes(prompt, block_size, adapter)
        requests.append(request)
    return requests


def mean_tokens(requests: list[SimRequest]) -> tuple[float, float]:
    """Mean prompt and output tokens per request."""
    n = max(len(requests), 1)
    return sum(r.num_prompt_tokens for r in requests) / n, sum(r.num_output_tokens for r in requests) / n
