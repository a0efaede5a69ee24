"""Every message between the HTTP process and the engine process (`--engine-mode process`), as
vLLM v1's EngineCoreRequest / EngineCoreOutputs are: one dataclass per kind, sent whole over a
multiprocessing pipe. What crosses is lists and small dataclasses, never tensors (a task head
crosses as the bytes torch.save wrote)."""

from dataclasses import dataclass

from polyhead.engine.core.backend import BackboneInfo, RequestRules
from polyhead.engine.core.outputs import CacheDigest, EngineStats, RequestOutput, TokenLogprobs
from polyhead.engine.core.request import PreparedRequest


# --- HTTP process -> engine process ---------------------------------------------------------------
@dataclass(slots=True)
class AddRequest:
    prepared: PreparedRequest  # tokenized and checked by the same rules the engine keeps (prompt text left out)


@dataclass(slots=True)
class AbortRequest:
    req_id: str


@dataclass(slots=True)
class RegisterHead:
    token: int  # answered by a CommandDone with this token
    task: str
    head: bytes  # the head module as torch.save wrote it (its class, sizes and weights)


@dataclass(slots=True)
class RegisterAdapter:
    token: int  # answered by a CommandDone with this token
    name: str
    folder: str


@dataclass(slots=True)
class Stop:
    """Stop stepping and exit (after the parent has drained what it wanted)."""


Command = AddRequest | AbortRequest | RegisterHead | RegisterAdapter | Stop


# --- engine process -> HTTP process ---------------------------------------------------------------
@dataclass(slots=True)
class StartUp:
    """The engine is built: what the HTTP process needs to check and route requests itself."""

    info: BackboneInfo
    rules: RequestRules  # the backbone's request rules (RequestLimits or EncoderLimits)
    stats: EngineStats
    adapters: list[str]  # adapters the config registered (--lora-modules)


@dataclass(slots=True)
class LoadFailed:
    error: BaseException  # why the engine could not be built (re-raised in the HTTP process)


@dataclass(slots=True)
class CommandDone:
    token: int  # the RegisterHead / RegisterAdapter it answers
    error: str | None  # why it was refused; None: done


@dataclass(slots=True)
class OutputDelta:
    """One request's progress in one step."""

    req_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    stop_reason: int | str | None
    new_logprobs: list[TokenLogprobs]  # of new_token_ids; [] when the request asked for none
    num_cached_tokens: int
    error: str | None
    text: str | None  # the whole text, on the last output only (a stop string may have cut it)
    pooled: list[float] | list[list[float]] | float | None  # a pooling request's result

    def then(self, later: "OutputDelta") -> "OutputDelta":
        """This delta and the next one of the same request as one."""
        return OutputDelta(self.req_id, self.new_token_ids + later.new_token_ids, self.new_text + later.new_text,
                           later.finished, later.finish_reason, later.stop_reason,
                           self.new_logprobs + later.new_logprobs, later.num_cached_tokens, later.error, later.text,
                           later.pooled)

    @classmethod
    def of(cls, out: RequestOutput) -> "OutputDelta":
        num_new = len(out.new_token_ids)
        new_logprobs = [] if out.logprobs is None else out.logprobs[len(out.token_ids) - num_new:]
        return cls(out.req_id, out.new_token_ids, out.new_text, out.finished, out.finish_reason, out.stop_reason,
                   new_logprobs, out.num_cached_tokens, out.error, out.text if out.finished else None, out.pooled)


@dataclass(slots=True)
class StepReport:
    """What the engine process sends after each step, and at least every idle_wait_s while idle."""

    outputs: list[OutputDelta]
    stats: EngineStats
    at: float  # time.monotonic() when it stepped or checked in (one clock for all processes here)
    stepped: bool  # False for an idle check-in or a report of commands applied
    rejected: list[tuple[str, str]]  # (req_id, why) for requests the engine refused to admit
    digest: CacheDigest | None = None  # what it caches, every digest_period_s when asked for (a router reads it)


@dataclass(slots=True)
class LoopDied:
    reason: str  # the error that ended the step loop


Report = StartUp | LoadFailed | CommandDone | StepReport | LoopDied
