"""The engine's step loop on a thread of the serving process (`--engine-mode thread`).

Only that thread touches the engine's scheduler: other threads hand it commands through a
queue (add, abort), and it hands outputs back to each caller's event loop. torch, oneDNN and
the native kernels release the GIL while they compute, so the HTTP event loop keeps serving
while a step runs.

Supervision, for an AsyncEngine built from a config: when the loop dies (an error escapes a step
or the loop itself), the loop thread drops the dead engine, builds a new one with backoff, registers
the heads and adapters registered here again, and admits every request that had not finished: one
that had produced tokens continues from them, one that had produced nothing starts again (the rules
of engine/client/supervision.py, shared with ProcessEngine). Requests submitted meanwhile wait in
the command queue. Built around an existing Engine, a dead loop fails everyone and stays dead.
"""

import logging
import queue
import threading
import time

from polyhead.config import EngineConfig
from polyhead.engine.client.engine_client import EngineClient, EngineDeadError
from polyhead.engine.client.supervision import Progress, RestartPolicy, idle_stats, take_repeat_victims
from polyhead.engine.core.engine import Engine, prepare_request
from polyhead.engine.core.outputs import CacheDigest, EngineStats, RequestOutput
from polyhead.engine.core.params import SamplingParams
from polyhead.engine.core.request import PreparedRequest, Routing
from polyhead.engine.factory import build_engine

logger = logging.getLogger(__name__)
__all__ = ["AsyncEngine", "EngineDeadError"]


class AsyncEngine(EngineClient):
    def __init__(self, engine: Engine, idle_wait_s: float = 0.5, config: EngineConfig | None = None):
        super().__init__()
        self.engine: Engine | None = engine  # None while a dead one is replaced
        self.config = config  # set: a dead loop builds a new engine from it (supervision)
        self.tokenizer = engine.tokenizer
        self.info = engine.info
        self.rules = engine.rules
        self.idle_wait_s = idle_wait_s  # the loop wakes at least this often, so health stays fresh
        self._commands: queue.SimpleQueue = queue.SimpleQueue()  # a PreparedRequest to add, or a req_id to abort
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # supervision (config set); only the loop thread touches these, but for the flag
        self._progress: dict[str, Progress] = {}  # admitted, unfinished requests: what was delivered
        self._policy = RestartPolicy()
        self._heads: dict = {}  # task -> head registered here (a new engine gets them again)
        self._adapter_folders: dict[str, str] = {}  # registered here (a new engine gets them again)
        self._catalog: tuple = ({}, [], None)  # the dead engine's heads, adapters, default params (requests check them)
        self._idle_stats: EngineStats | None = None  # what stats() says while restarting

    # --- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: EngineConfig) -> "AsyncEngine":
        """Build the engine on the thread that will step it, and start stepping.

        OpenMP gives every thread that runs parallel work its own thread team; an engine loaded on
        one thread (weight packing, cache zeroing) and stepped on another leaves two teams fighting
        over 2 cores, measured at 13 vs 24 ms per single-stream step here. So the loop thread does both,
        and builds the engine that replaces a dead one too (supervision).
        """
        made: dict = {}
        ready = threading.Event()

        def build_then_run():
            try:
                made["engine"] = engine = cls(build_engine(config), config=config)
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
        return (self._thread is not None and self._thread.is_alive() and self.dead_reason is None
                and not self._restarting)

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        self.rules.check_fits(num_prompt_tokens, max_tokens)

    # Registration happens at start-up, before requests name the task: the step loop reads the
    # head and adapter tables, and a dict insert is atomic under the GIL.
    def register_head(self, task: str, head) -> None:
        self._serving_engine().register_head(task, head)
        self._heads[task] = head

    def register_adapter(self, name: str, folder: str) -> None:
        self._serving_engine().register_adapter(name, folder)
        self._adapter_folders[name] = str(folder)

    def _serving_engine(self) -> Engine:
        engine = self.engine
        if engine is None:
            raise EngineDeadError(self.dead_reason or "the engine is being restarted")
        return engine

    def stats(self) -> EngineStats:
        engine = self.engine
        return engine.stats() if engine is not None else self._idle_stats

    @property
    def adapter_names(self) -> list[str]:
        engine = self.engine
        return list(engine.adapter_names) if engine is not None else list(self._catalog[1])

    def cache_digest(self) -> CacheDigest:
        engine = self.engine
        return engine.cache_digest() if engine is not None else CacheDigest()

    # --- requests (event loop thread) ------------------------------------------------------------
    def _new_request(self, prompt: str | list[int], params: SamplingParams, req_id: str,
                     **routing) -> PreparedRequest:
        engine = self.engine
        if engine is not None:
            return engine.prepare(prompt, params, req_id, **routing)
        heads, adapters, default_params = self._catalog  # restarting: check it as the dead engine would have
        return prepare_request(self.rules, self.tokenizer, heads, adapters, prompt,
                               params if params is not None else default_params, req_id, Routing(**routing))

    def _send_add(self, prepared: PreparedRequest) -> None:
        self._commands.put(prepared)
        self._wake.set()

    def _send_abort(self, req_id: str) -> None:
        self._streams.pop(req_id, None)  # nobody reads it any more (nor, after a restart, its lost abort output)
        self._commands.put(req_id)
        self._wake.set()

    # --- the step loop (engine thread) -------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                try:
                    self._serve()
                    return  # stopped
                except BaseException as err:  # a bug in the loop itself: never hang anyone
                    logger.exception("the engine loop died")
                    reason = f"the engine loop died: {type(err).__name__}: {err}"
                if self.config is None or self._stopping.is_set():
                    self.dead_reason = reason
                    self._fail_all(reason)
                    return
                if not self._restart(reason):
                    return  # given up: everyone failed
        finally:
            self._fail_all("the engine stopped")

    def _serve(self) -> None:
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
            if self.config is not None:
                self._track(outputs)
            self._deliver(outputs)

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, PreparedRequest):
                try:
                    self.engine.admit(command)
                except ValueError as err:  # e.g. a duplicate req_id
                    self._fail(command.req_id, err)
                    continue
                if self.config is not None:
                    self._progress[command.req_id] = Progress(command)
            else:
                self._progress.pop(command, None)  # not continued if the engine dies before its abort output
                self.engine.abort_request(command)

    def _track(self, outputs: list[RequestOutput]) -> None:
        """Keep what each request has been given, and put a continued request's output in its own terms."""
        for i, out in enumerate(outputs):
            progress = self._progress.get(out.req_id)
            if progress is None:
                continue
            if out.finished:
                del self._progress[out.req_id]
            if progress.num_base_tokens:
                out = outputs[i] = progress.rebase(out)
            progress.token_ids, progress.text, progress.logprobs = out.token_ids, out.text, out.logprobs

    # --- supervision (engine thread) ---------------------------------------------------------------
    def _restart(self, reason: str) -> bool:
        """Replace the dead engine (with backoff) and admit its unfinished requests again; False: given up."""
        dead, self.engine = self.engine, None  # freed before the new one is built ("auto" KV memory reads what is free)
        self._catalog = (dict(dead.heads), list(dead.adapter_names), dead.backend.default_params)
        self._idle_stats = idle_stats(_stats_of(dead))
        self._restarting = True
        del dead
        if (crash_loop := self._policy.crash_loop(reason)) is not None:  # restarting does not help
            return self._give_up(crash_loop)
        for req_id, error in take_repeat_victims(self._progress, reason):
            self._fail(req_id, error)
        backoff = self._policy.backoff_s
        for attempt, wait in enumerate(backoff, start=1):
            if self._stopping.wait(wait):
                return self._give_up("the engine stopped")
            try:
                engine = build_engine(self.config)
                for task, head in self._heads.items():
                    engine.register_head(task, head)
                for name, folder in self._adapter_folders.items():
                    engine.register_adapter(name, folder)
            except Exception as err:  # noqa: BLE001 - retried, then given up
                logger.error("engine restart %d/%d failed: %s", attempt, len(backoff), err)
                engine = None  # one that refused a head is freed before the next is built
                continue
            self._readmit(engine)
            self.engine = engine
            self.num_restarts += 1
            self._restarting = False
            logger.info("a new engine replaces the dead one (restart %d)", self.num_restarts)
            return True
        return self._give_up(f"{reason}; {len(backoff)} restarts failed")

    def _readmit(self, engine: Engine) -> None:
        """Admit every unfinished request in the new engine (those submitted meanwhile follow from _commands)."""
        for req_id, progress in list(self._progress.items()):
            resumed = progress.continuation(self.tokenizer)
            if resumed is None:  # its last output died with the engine: it had finished
                del self._progress[req_id]
                self._deliver([progress.final_output()])
                continue
            try:
                engine.admit(resumed)
            except ValueError as err:
                del self._progress[req_id]
                self._fail(req_id, err)

    def _give_up(self, reason: str) -> bool:
        self.dead_reason = reason
        self._restarting = False
        self._progress.clear()
        self._fail_all(reason)
        return False


def _stats_of(engine: Engine) -> EngineStats | None:
    try:
        return engine.stats()
    except Exception:  # noqa: BLE001 - a dead engine's figures are only for /metrics
        return None
