"""The asyncio front of the engine: submit a request, iterate its outputs, cancel it.

The step loop runs on its own thread. Only that thread touches the engine's scheduler: other
threads hand it commands through a queue (add, abort), and it hands outputs back to each
caller's event loop. torch, oneDNN and the native kernels release the GIL while they compute,
so the HTTP event loop keeps serving while a step runs.
"""

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from polyhead.config import EngineConfig
from polyhead.engine.engine import LLMEngine, TrackedRequest
from polyhead.engine.factory import build_engine
from polyhead.engine.outputs import RequestOutput
from polyhead.engine.params import PoolingParams, SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The step loop is not running (stopped or crashed); no request can be served."""


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue  # RequestOutput items, or an exception that ends the stream


class AsyncEngine:
    def __init__(self, engine: LLMEngine, idle_wait_s: float = 0.5):
        self.engine = engine
        self.idle_wait_s = idle_wait_s  # the loop wakes at least this often, so health stays fresh
        self._commands: queue.SimpleQueue = queue.SimpleQueue()  # ("add", TrackedRequest) | ("abort", req_id)
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_step_at = time.monotonic()  # when the loop last stepped or checked for work
        self.dead_reason: str | None = None
        # Requests submitted that have produced nothing yet, and their prompt tokens (admission
        # control reads these). Only the event loop's thread changes them.
        self.num_queued = 0
        self.num_queued_tokens = 0
        self.on_step = None  # called on the engine thread after each step with its token count (metrics)

    # --- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: EngineConfig) -> "AsyncEngine":
        """Build the engine on the thread that will step it, and start stepping.

        OpenMP gives every thread that runs parallel work its own thread team; an engine loaded on
        one thread (weight packing, cache zeroing) and stepped on another leaves two teams fighting
        over 2 cores, measured at 13 vs 24 ms per single-stream step here. So the loop thread does both.
        """
        made: dict = {}
        ready = threading.Event()

        def build_then_run():
            try:
                made["engine"] = engine = cls(build_engine(config))  # an LLMEngine or an EncoderEngine
            except BaseException as err:  # noqa: BLE001 - re-raised on the caller's thread
                made["error"] = err
                ready.set()
                return
            engine._thread = threading.current_thread()
            ready.set()
            engine._run()

        threading.Thread(target=build_then_run, name="polyhead-engine", daemon=True).start()
        ready.wait()
        if "error" in made:
            raise made["error"]
        return made["engine"]

    def start(self) -> "AsyncEngine":
        self._thread = threading.Thread(target=self._run, name="polyhead-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.dead_reason is None

    def seconds_since_last_step(self) -> float:
        return time.monotonic() - self.last_step_at

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    # --- requests --------------------------------------------------------------------------------
    def generate(self, prompt: str | list[int], params: SamplingParams | PoolingParams,
                 req_id: str | None = None, **routing) -> AsyncIterator[RequestOutput]:
        """Queue a request now and return an iterator over its outputs; the last has finished=True
        (a pooling request yields just that one, with `pooled`). Bad input raises ValueError here,
        before anything is queued. `routing`: task, adapter, priority, tenant, deadline, after."""
        return self.stream(self.prepare(prompt, params, req_id, **routing))

    def prepare(self, prompt: str | list[int], params: SamplingParams | PoolingParams, req_id: str | None = None,
                **routing) -> TrackedRequest:
        """Tokenize and validate (ValueError names the limit); nothing is queued yet.
        `routing`: task, adapter, priority, tenant, deadline (see Request), after (see LLMEngine)."""
        if not self.is_running:
            raise EngineDeadError(self.dead_reason or "the engine loop is not running")
        return self.engine.new_request(prompt, params, req_id or uuid.uuid4().hex, **routing)

    def stream(self, tracked: TrackedRequest) -> AsyncIterator[RequestOutput]:
        """Queue a prepared request; leaving the iteration early (client gone, timeout,
        cancellation) aborts it, and its blocks are freed at the next step."""
        self.num_queued += 1
        self.num_queued_tokens += tracked.request.num_prompt_tokens
        return self._iterate(tracked, self.submit(tracked))

    async def _iterate(self, tracked: TrackedRequest, stream: "_Stream") -> AsyncIterator[RequestOutput]:
        finished, queued = False, True
        try:
            while True:
                item = await stream.outputs.get()
                if queued:  # its first output (or error) means it is no longer waiting
                    self._leave_queue(tracked)
                    queued = False
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if queued:
                self._leave_queue(tracked)
            if not finished:
                self.abort(tracked.request.req_id)

    def _leave_queue(self, tracked: TrackedRequest) -> None:
        self.num_queued -= 1
        self.num_queued_tokens -= tracked.request.num_prompt_tokens

    def submit(self, tracked: TrackedRequest) -> _Stream:
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[tracked.request.req_id] = stream
        self._commands.put(("add", tracked))
        self._wake.set()
        return stream

    def abort(self, req_id: str) -> None:
        self._commands.put(("abort", req_id))
        self._wake.set()

    # --- the step loop (engine thread) -------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._apply_commands()
                if not self.engine.has_unfinished_requests():
                    self.last_step_at = time.monotonic()
                    self._wake.wait(self.idle_wait_s)
                    self._wake.clear()
                    continue
                outputs = self.engine.step()
                self.last_step_at = time.monotonic()
                if self.on_step is not None:
                    self.on_step(self.engine.last_step_num_tokens)
                self._deliver(outputs)
        except BaseException as err:  # a bug in the loop itself: fail everyone, never hang them
            logger.exception("the engine loop died")
            self.dead_reason = f"the engine loop died: {type(err).__name__}: {err}"
            for req_id in list(self._streams):
                self._fail(req_id, EngineDeadError(self.dead_reason))
        finally:
            for req_id in list(self._streams):
                self._fail(req_id, EngineDeadError("the engine stopped"))

    def _apply_commands(self) -> None:
        while True:
            try:
                command, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if command == "add":
                try:
                    self.engine.admit(arg)
                except ValueError as err:  # e.g. a duplicate req_id
                    self._fail(arg.request.req_id, err)
            elif not self.engine.abort_request(arg):
                self._streams.pop(arg, None)  # already finished or never admitted

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
            _put(stream, error)


def _put_all(items: list) -> None:
    for outputs, item in items:
        outputs.put_nowait(item)


def _put(stream: _Stream, item) -> None:
    try:
        stream.loop.call_soon_threadsafe(stream.outputs.put_nowait, item)
    except RuntimeError:  # the caller's event loop is closed: nobody is waiting any more
        pass
