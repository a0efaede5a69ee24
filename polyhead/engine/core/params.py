"""Per-request generation parameters. They validate themselves: a bad value raises a
ValueError that names the parameter and its limit, before the request reaches the engine."""

from dataclasses import dataclass, field

from polyhead.engine.core.kinds import POOLING_KINDS

# The sampler computes in float32, where a top_p below this is 0 and keeps no token at all. A
# nucleus that small is the most likely token alone, which this keeps too: the value is legal
# (OpenAI and vLLM accept any top_p in (0, 1]), so it is raised to this, not refused.
MIN_TOP_P = 2.0**-126  # float32's smallest normal number
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes


STRUCTURED_KINDS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A constraint on a request's output text, compiled to a token grammar by the engine.

    kind json: `value` is a JSON schema as text; json_object: any JSON object (`value` unused);
    regex: a regular expression the whole output matches; choice: the output is exactly one of the
    strings in `choices`; grammar: a Lark grammar (llguidance's dialect, which also reads GBNF).
    Frozen and hashable: compiled grammars are cached by it."""

    kind: str
    value: str = ""
    choices: tuple[str, ...] = ()
    # json: a schema keyword the grammar engine does not implement is refused (True) or ignored (False)
    strict: bool = True

    def __post_init__(self):
        _check(self.kind in STRUCTURED_KINDS, "structured_outputs",
               f"kind must be one of {', '.join(STRUCTURED_KINDS)}, got {self.kind!r}")
        if self.kind == "choice":
            _check(bool(self.choices) and all(isinstance(c, str) for c in self.choices), "structured_outputs",
                   "choice needs a non-empty list of strings")
        elif self.kind != "json_object":
            _check(bool(self.value), "structured_outputs", f"{self.kind} needs a non-empty value")


@dataclass(slots=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens with mass >= top_p; in (0, 1]
    top_k: int = 0  # keep the k most likely tokens; 0 disables
    min_p: float = 0.0  # drop tokens with prob < min_p * max prob; in [0, 1]
    repetition_penalty: float = 1.0  # > 1 discourages tokens seen in prompt or output (CTRL-style)
    presence_penalty: float = 0.0  # subtracted once from tokens already generated; in [-2, 2]
    frequency_penalty: float = 0.0  # subtracted per occurrence in the generated tokens; in [-2, 2]
    seed: int | None = None  # same seed, same prompt -> same output; in [-2^63, 2^64 - 1]
    max_tokens: int = 16  # new tokens to generate at most
    stop: list[str] = field(default_factory=list)  # stop strings, matched on the detokenized text
    stop_token_ids: list[int] = field(default_factory=list)  # extra token ids that end the output
    ignore_eos: bool = False  # keep going past EOS (benchmarks)
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # None: no logprobs; 0: the chosen token's; k: also the top-k
    skip_special_tokens: bool = True
    structured: StructuredOutput | None = None  # the output must match this grammar; None: free text

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        _check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        self.top_p = max(self.top_p, MIN_TOP_P)
        _check(self.top_k >= 0, "top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
        _check(0 <= self.min_p <= 1, "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(self.repetition_penalty > 0, "repetition_penalty",
               f"must be > 0, got {self.repetition_penalty}")
        _check(-2 <= self.presence_penalty <= 2, "presence_penalty",
               f"must be in [-2, 2], got {self.presence_penalty}")
        _check(-2 <= self.frequency_penalty <= 2, "frequency_penalty",
               f"must be in [-2, 2], got {self.frequency_penalty}")
        _check(self.seed is None or MIN_SEED <= self.seed <= MAX_SEED, "seed",
               f"must fit in 64 bits: in [-2^63, 2^64 - 1], got {self.seed}")
        _check(self.max_tokens >= 1, "max_tokens", f"must be >= 1, got {self.max_tokens}")
        _check(self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs",
               f"must be None or in [0, 20], got {self.logprobs}")
        _check(all(s for s in self.stop), "stop", "stop strings must be non-empty")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name} {message}")


@dataclass(slots=True)
class PoolingParams:
    """A prefill-only request: its prompt's hidden states go to a head instead of the sampler.
    It finishes in the step that computes its last prompt token."""

    kind: str  # classify | tag | embed | score (log-prob of the prompt's last tokens, for zero-shot labels)
    task: str | None = None  # the task whose head applies (registered on the engine); None: no head
    # classify/embed: last | mean | cls token state; None: the task head's, else the backbone's own
    # (a decoder: last; an encoder: its sentence-transformers pooling, e.g. mean for all-MiniLM-L6-v2)
    pooling: str | None = None
    normalize: bool | None = None  # embed: L2-normalize; None: the task's, else the backbone's own
    num_scored_tokens: int = 0  # score: how many of the prompt's last tokens to score (>= 1)
    # score, instead: the log-prob of each of these tokens as the one after the prompt, all read from
    # the last position (zero-shot labels whose answers are one token each: one row scores them all)
    next_token_ids: tuple[int, ...] = ()
    truncate: bool = False  # a prompt over the backbone's limit is cut to it instead of rejected (encoders)

    def __post_init__(self):
        _check(self.kind in POOLING_KINDS, "kind", f"must be one of {', '.join(POOLING_KINDS)}, got {self.kind!r}")
        _check(self.pooling in (None, "last", "mean", "cls"), "pooling",
               f"must be last, mean or cls (or None for the default), got {self.pooling!r}")
        self.next_token_ids = tuple(self.next_token_ids)
        if self.kind == "score" and self.next_token_ids:
            _check(self.num_scored_tokens == 0, "num_scored_tokens",
                   "must be 0 when next_token_ids are scored (one or the other)")
        else:
            _check(self.kind != "score" or self.num_scored_tokens >= 1, "num_scored_tokens",
                   f"must be >= 1 for a score request, got {self.num_scored_tokens}")
            _check(not self.next_token_ids, "next_token_ids", "are only read by score requests")

    def first_needed_position(self, num_prompt_tokens: int) -> int:
        """The first prompt position whose hidden state this request's result reads: a prefix-cache
        hit may cover the tokens before it, never it (cached tokens are not recomputed)."""
        if self.kind == "score" and self.next_token_ids:  # the candidates are read at the last state
            return num_prompt_tokens - 1
        if self.kind == "score":  # token t is scored from the state at t - 1
            return num_prompt_tokens - self.num_scored_tokens - 1
        if self.kind == "tag" or self.pooling in ("mean", "cls"):
            return 0
        return num_prompt_tokens - 1
