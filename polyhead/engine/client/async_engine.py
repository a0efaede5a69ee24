"""The engine's step loop on a thread of the serving process (`--engine-mode thread`).

Only that thread touches the engine's scheduler: other threads hand it commands through a
queue (add, abort), and it hands outputs back to each caller's event loop. torch, oneDNN and
the native kernels release the GIL while they compute, so the HTTP event loop keeps serving
while a step runs.
"""

import logging
import queue
import threading
import time

from polyhead.config import EngineConfig
from polyhead.engine.client.engine_client import EngineClient, EngineDeadError
from polyhead.engine.core.engine import Engine
from polyhead.engine.core.outputs import EngineStats
from polyhead.engine.core.params import SamplingParams
from polyhead.engine.core.request import PreparedRequest
from polyhead.engine.factory import build_engine

logger = logging.getLogger(__name__)
__all__ = ["AsyncEngine", "EngineDeadError"]


class AsyncEngine(EngineClient):
    def __init__(self, engine: Engine, idle_wait_s: float = 0.5):
        super().__init__()
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.info = engine.info
        self.rules = engine.rules
        self.idle_wait_s = idle_wait_s  # the loop wakes at least this often, so health stays fresh
        self._commands: queue.SimpleQueue = queue.SimpleQueue()  # a PreparedRequest to add, or a req_id to abort
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

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
                made["engine"] = engine = cls(build_engine(config))
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

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        self.engine.check_fits(num_prompt_tokens, max_tokens)

    # Registration happens at start-up, before requests name the task: the step loop reads the
    # head and adapter tables, and a dict insert is atomic under the GIL.
    def register_head(self, task: str, head) -> None:
        self.engine.register_head(task, head)

    def register_adapter(self, name: str, folder: str) -> None:
        self.engine.register_adapter(name, folder)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    # --- requests (event loop thread) ------------------------------------------------------------
    def _new_request(self, prompt: str | list[int], params: SamplingParams, req_id: str,
                     **routing) -> PreparedRequest:
        return self.engine.prepare(prompt, params, req_id, **routing)

    def _send_add(self, prepared: PreparedRequest) -> None:
        self._commands.put(prepared)
        self._wake.set()

    def _send_abort(self, req_id: str) -> None:
        self._commands.put(req_id)
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
            self._fail_all(self.dead_reason)
        finally:
            self._fail_all("the engine stopped")

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
            elif not self.engine.abort_request(command):
                self._streams.pop(command, None)  # already finished or never admitted
