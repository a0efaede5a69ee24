"""What the HTTP layer sees of an engine that steps elsewhere: submit a request, iterate its
outputs on the caller's event loop (a `RequestStream`), cancel it by closing that stream.

Two kinds share this: `AsyncEngine` steps the engine on a thread of this process,
`ProcessEngine` in a child process. Each hands over one step's outputs per event loop in one
callback (`_deliver`); this class turns them into per-request asyncio queues.
"""

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Self

from polyhead.engine.core.backend import BackboneInfo, RequestRules
from polyhead.engine.core.outputs import CacheDigest, EngineStats, RequestOutput
from polyhead.engine.core.params import PoolingParams, SamplingParams


class EngineDeadError(RuntimeError):
    """The step loop is not running (stopped or crashed); no request can be served."""


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue  # RequestOutput items, or an exception that ends the stream


class EngineClient:
    """Subclasses provide: tokenizer, info, rules, check_fits, register_head, register_adapter,
    adapter_names, stats, is_running, start, stop, and _new_request / _send_add / _send_abort (of
    PreparedRequests)."""

    tokenizer = None  # the model's tokenizer (the server applies chat templates with it)
    info: BackboneInfo  # what the backbone is (generative, hidden size, prefix cache, KV cache size)
    rules: RequestRules  # how it checks a request

    def __init__(self):
        self._streams: dict[str, _Stream] = {}
        self.last_step_at = time.monotonic()  # when the loop last stepped or checked for work
        self.dead_reason: str | None = None
        # Requests submitted that have produced nothing yet, and their prompt tokens (admission
        # control reads these). Only the event loop's thread changes them.
        self.num_queued = 0
        self.num_queued_tokens = 0
        self.num_restarts = 0  # times a dead engine was replaced by a new one (/metrics)
        self._restarting = False  # a dead engine is being replaced: new requests wait for the new one
        self.on_step = None  # called after each step with its token count (metrics); not on the event loop

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        raise NotImplementedError

    def register_head(self, task: str, head) -> None:
        """Serve a task's ClassifyHead / TagHead / EmbedPooler on this backbone's hidden states
        (pooling requests name it by `task`). ValueError when the backbone cannot take it."""
        raise NotImplementedError

    def register_adapter(self, name: str, folder: str) -> None:
        """Make a PEFT LoRA adapter folder usable as `adapter=name`; its config and shapes are
        checked now (ValueError: also on a backbone that serves none), its weights load on first
        use without blocking the steps."""
        raise NotImplementedError

    def stats(self) -> EngineStats:
        raise NotImplementedError

    def replica_reports(self) -> dict:
        """Each replica's last report (polyhead/deploy/reports.py: stats, pid, resident adapters), by
        replica id, for an engine client in front of several (Ray Serve's ReplicaPool); {} for one engine."""
        return {}

    def cache_digest(self) -> CacheDigest:
        """The KV blocks and adapters the engine holds (a Ray replica's routing stats)."""
        return CacheDigest()

    @property
    def is_running(self) -> bool:
        raise NotImplementedError

    @property
    def is_restarting(self) -> bool:
        """A dead engine is being replaced (supervision): requests wait, /health says so."""
        return self._restarting and self.dead_reason is None

    @property
    def is_accepting(self) -> bool:
        """New requests are taken: the loop runs, or is being restarted (they wait for it)."""
        return self.is_running or self.is_restarting

    def seconds_since_last_step(self) -> float:
        return time.monotonic() - self.last_step_at

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    # --- requests --------------------------------------------------------------------------------
    def generate(self, prompt: str | list[int], params: SamplingParams | PoolingParams,
                 req_id: str | None = None, **routing) -> "RequestStream":
        """Queue a request now and return an iterator over its outputs; the last has finished=True
        (a pooling request yields just that one, with `pooled`). Bad input raises ValueError here,
        before anything is queued. `routing`: task, adapter, priority, tenant, deadline, after."""
        return self.stream(self.prepare(prompt, params, req_id, **routing))

    def prepare(self, prompt: str | list[int], params: SamplingParams | PoolingParams, req_id: str | None = None,
                **routing):
        """Tokenize and validate (ValueError names the limit); nothing is queued yet.
        `routing`: task, adapter, priority, tenant, deadline, after (see Routing)."""
        if not self.is_accepting:
            raise EngineDeadError(self.dead_reason or "the engine loop is not running")
        return self._new_request(prompt, params, req_id or uuid.uuid4().hex, **routing)

    def stream(self, prepared) -> "RequestStream":
        """Queue a prepared request and return its outputs' stream. Close it when done with it
        (`aclose`, or `async with`): closing before the end aborts the request, and its blocks are
        freed at the next step."""
        if prepared.req_id in self._streams:
            raise ValueError(f"req_id {prepared.req_id!r} is already in use")
        self.num_queued += 1
        self.num_queued_tokens += prepared.num_prompt_tokens
        return RequestStream(self, prepared, self.submit(prepared))

    def _leave_queue(self, prepared) -> None:
        self.num_queued -= 1
        self.num_queued_tokens -= prepared.num_prompt_tokens

    def submit(self, prepared) -> _Stream:
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[prepared.req_id] = stream
        self._send_add(prepared)
        return stream

    def abort(self, req_id: str) -> None:
        self._send_abort(req_id)

    def _new_request(self, prompt, params: SamplingParams, req_id: str, **routing):
        raise NotImplementedError

    def _send_add(self, prepared) -> None:
        raise NotImplementedError

    def _send_abort(self, req_id: str) -> None:
        raise NotImplementedError

    # --- outputs (called on the thread that receives them) -------------------------------------------
    def _deliver(self, outputs: list[RequestOutput]) -> None:
        # One callback per event loop per step, not one per request: waking the loop 32 times a
        # step cost the step loop GIL time it needs for its own Python.
        batches: dict[asyncio.AbstractEventLoop, list] = {}
        for output in outputs:
            stream = self._streams.get(output.req_id)
            if stream is None:
                continue
            if output.finished:
                del self._streams[output.req_id]
            batches.setdefault(stream.loop, []).append((stream.outputs, output))
        for loop, items in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the caller's event loop is closed: nobody is waiting any more
                pass

    def _fail(self, req_id: str, error: BaseException) -> None:
        stream = self._streams.pop(req_id, None)
        if stream is not None:
            try:
                stream.loop.call_soon_threadsafe(stream.outputs.put_nowait, error)
            except RuntimeError:  # the caller's event loop is closed: nobody is waiting any more
                pass

    def _fail_all(self, reason: str) -> None:
        for req_id in list(self._streams):
            self._fail(req_id, EngineDeadError(reason))


class RequestStream:
    """One submitted request's outputs, iterated on the caller's event loop. Until its first output
    it counts as queued (admission control reads that). `close()` gives its place back and aborts it
    if it has not finished, whether or not it was ever iterated: a deadline or a disconnect may come
    before the first `__anext__`, and an async generator that never started never runs its finally.
    Reaching the end, or an error or cancellation while waiting for an output, closes it too."""

    def __init__(self, client: EngineClient, prepared, stream: _Stream):
        self._client, self._prepared, self._stream = client, prepared, stream
        self._is_queued = True  # no output yet
        self._is_finished = False  # its last output came: nothing left to abort
        self._is_closed = False

    @property
    def req_id(self) -> str:
        return self._prepared.req_id

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._is_closed:
            raise StopAsyncIteration
        try:
            item = await self._stream.outputs.get()
        except BaseException:  # cancelled: the caller has left
            self.close()
            raise
        if self._is_queued:  # its first output (or error) means it is no longer waiting
            self._client._leave_queue(self._prepared)
            self._is_queued = False
        if isinstance(item, BaseException):
            self.close()
            raise item
        if item.finished:
            self._is_finished = True
            self.close()
        return item

    def take_ready(self) -> list[RequestOutput]:
        """The outputs already here, without waiting (after one `__anext__`): a caller that forwards
        them elsewhere sends several steps' worth in one message."""
        items = []
        while not self._is_closed and not self._stream.outputs.empty():
            item = self._stream.outputs.get_nowait()
            if isinstance(item, BaseException):
                self.close()
                raise item
            items.append(item)
            if item.finished:
                self._is_finished = True
                self.close()
        return items

    def close(self) -> None:
        if self._is_closed:
            return
        self._is_closed = True
        if self._is_queued:
            self._client._leave_queue(self._prepared)
            self._is_queued = False
        if not self._is_finished:
            self._client.abort(self.req_id)

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_) -> None:
        self.close()


def _put_all(items: list) -> None:
    for outputs, item in items:
        outputs.put_nowait(item)
