"""What both engine clients do when their engine dies (ProcessEngine: the child process; AsyncEngine:
the step loop on its thread): the restart policy, and what a request keeps to go on in a new engine.

The rule: a request that had produced tokens continues from them (its prompt and output so far are
the new prompt, for the tokens it has left, as a preempted request is recomputed); one that had
produced nothing starts again; one that was in the engine during two deaths fails alone (it may be
what kills it). Deaths faster than MAX_RESTARTS_IN_WINDOW in RESTART_WINDOW_S, or a restart that
fails at every wait of RESTART_BACKOFF_S, give up: everyone fails with EngineDeadError.
"""

import time
from dataclasses import dataclass, field, replace

from polyhead.engine.client.engine_client import EngineDeadError
from polyhead.engine.client.messages import OutputDelta
from polyhead.engine.core.outputs import EngineStats, RequestOutput
from polyhead.engine.core.params import PoolingParams
from polyhead.engine.core.request import PreparedRequest

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # waits before each attempt to build a new engine; then given up
MAX_RESTARTS_IN_WINDOW, RESTART_WINDOW_S = 5, 120.0  # more deaths than this in the window: given up


class EngineRestartedError(EngineDeadError):
    """The engine died while this request ran, twice: it is not retried again."""


@dataclass(slots=True)
class Progress:
    """What the caller has been given of an unfinished request: enough to continue it elsewhere."""

    prepared: PreparedRequest  # as submitted
    token_ids: list[int] = field(default_factory=list)  # the whole output delivered so far
    text: str = ""  # the whole text delivered so far
    logprobs: list | None = None  # of token_ids, when asked for (may run ahead: cut to token_ids)
    num_deaths: int = 0  # engines that died while it ran
    num_base_tokens: int = 0  # output tokens before its continuation (the new engine counts after them)
    base_text: str = ""  # text before its continuation (the new engine's whole text comes after it)
    unsent_text: str = ""  # text of tokens already out whose characters the dead engine held back

    def apply(self, delta: OutputDelta) -> RequestOutput:
        """Take one step's delta from the engine (in another process): the request's whole output so far."""
        self.token_ids.extend(delta.new_token_ids)
        new_text, self.unsent_text = self.unsent_text + delta.new_text, ""
        self.text = self.base_text + delta.text if delta.text is not None else self.text + new_text
        if self.logprobs is not None:
            self.logprobs.extend(delta.new_logprobs)
        prepared = self.prepared
        return RequestOutput(
            req_id=delta.req_id, prompt=prepared.prompt, prompt_token_ids=prepared.token_ids,
            text=self.text, token_ids=list(self.token_ids), new_text=new_text,
            new_token_ids=delta.new_token_ids, finished=delta.finished, finish_reason=delta.finish_reason,
            stop_reason=delta.stop_reason, num_cached_tokens=delta.num_cached_tokens, error=delta.error,
            logprobs=None if self.logprobs is None else list(self.logprobs), pooled=delta.pooled)

    def continuation(self, tokenizer) -> PreparedRequest | None:
        """What a new engine runs: the request again when it had produced nothing (or is pooling);
        else its prompt and output so far as the prompt, for the tokens it has left. None: it had
        finished (its last output died with the engine); `final_output` ends it."""
        prepared = self.prepared
        num_done = len(self.token_ids)
        if num_done == 0 or isinstance(prepared.params, PoolingParams):
            return prepared
        left = prepared.params.max_tokens - num_done
        if left <= 0:
            return None
        if self.logprobs is not None:
            self.logprobs = self.logprobs[:num_done]
        whole = tokenizer.decode(self.token_ids, skip_special_tokens=prepared.params.skip_special_tokens)
        self.unsent_text = whole[len(self.text):] if whole.startswith(self.text) else ""
        self.base_text = self.text + self.unsent_text
        self.num_base_tokens = num_done
        return replace(prepared, token_ids=prepared.token_ids + self.token_ids,
                       params=replace(prepared.params, max_tokens=left),
                       num_continued_tokens=num_done)

    def rebase(self, out: RequestOutput) -> RequestOutput:
        """A continued request's output from the new engine, as the caller sees it: its own prompt,
        the tokens and text from before the death in front."""
        if self.num_base_tokens == 0:
            return out
        new_text, self.unsent_text = self.unsent_text + out.new_text, ""
        base_logprobs = self.logprobs[:self.num_base_tokens] if self.logprobs is not None else []
        return replace(out, prompt=self.prepared.prompt, prompt_token_ids=self.prepared.token_ids,
                       token_ids=self.token_ids[:self.num_base_tokens] + out.token_ids,
                       text=self.base_text + out.text, new_text=new_text,
                       logprobs=None if out.logprobs is None else base_logprobs + out.logprobs)

    def final_output(self) -> RequestOutput:
        """The end of a request whose last output died with its engine: it had all its tokens."""
        prepared = self.prepared
        return RequestOutput(
            req_id=prepared.req_id, prompt=prepared.prompt, prompt_token_ids=prepared.token_ids, text=self.text,
            token_ids=list(self.token_ids), finished=True, finish_reason="length",
            logprobs=None if self.logprobs is None else self.logprobs[:len(self.token_ids)])


def take_repeat_victims(progress: dict[str, Progress], reason: str) -> list[tuple[str, EngineRestartedError]]:
    """Count a death for every unfinished request; remove those it was the second for, with their error."""
    victims = []
    for req_id, entry in list(progress.items()):
        entry.num_deaths += 1
        if entry.num_deaths >= 2:
            del progress[req_id]
            victims.append((req_id, EngineRestartedError(
                f"{reason}, the second time while this request ran: it is not retried again")))
    return victims


class RestartPolicy:
    """When a dead engine is worth replacing, and how long to wait before each try."""

    def __init__(self):
        self._death_times: list[float] = []  # time.monotonic() of recent deaths

    @property
    def backoff_s(self) -> tuple[float, ...]:
        return RESTART_BACKOFF_S  # read at each death (tests shorten it)

    def crash_loop(self, reason: str) -> str | None:
        """Note a death; the reason to give up when deaths come too fast for restarting to help."""
        now = time.monotonic()
        self._death_times = [t for t in self._death_times if now - t < RESTART_WINDOW_S] + [now]
        if len(self._death_times) > MAX_RESTARTS_IN_WINDOW:
            return f"{reason}; the engine died {len(self._death_times)} times in {RESTART_WINDOW_S:.0f} s"
        return None


def idle_stats(stats: EngineStats | None) -> EngineStats | None:
    """Figures of an engine that holds nothing (a dead one's, until its successor reports)."""
    if stats is None:
        return None
    return replace(stats, num_unfinished=0, num_running=0, num_free_blocks=stats.num_blocks, last_step_num_tokens=0,
                   last_step_rows={})
