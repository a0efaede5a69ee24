"""The engine in a child process (`--engine-mode process`).

The child builds the Engine (either backend) and steps it on its main thread; the HTTP process only
tokenizes, checks and talks to it over two pipes, in the messages of engine/client/messages.py.
Commands go in (a `PreparedRequest`, aborts, and at start-up the task heads and adapters to
register, each answered); after each step one `StepReport` comes back with every request's new
tokens and text (deltas, never the whole output again), pooling results, and the engine's stats.
This process keeps the backbone's request rules and the heads and adapter names it registered, so it
checks a request exactly as the engine would before queueing it. A reader thread in this process
rebuilds each request's RequestOutput from the deltas and hands the step to each event loop in one
callback.
If the child dies, its end of the pipe closes and every open stream fails with EngineDeadError.
"""

import io
import itertools
import logging
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, field, replace

import torch

from polyhead.config import EngineConfig
from polyhead.engine.client.engine_client import EngineClient, EngineDeadError
from polyhead.engine.client.messages import (
    AbortRequest,
    AddRequest,
    CommandDone,
    LoadFailed,
    LoopDied,
    RegisterAdapter,
    RegisterHead,
    StartUp,
    StepReport,
    Stop,
)
from polyhead.engine.client.process_worker import run_engine_process
from polyhead.engine.core.backend import RequestRules
from polyhead.engine.core.engine import prepare_request
from polyhead.engine.core.outputs import EngineStats, RequestOutput
from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.engine.core.request import PreparedRequest, Routing

logger = logging.getLogger(__name__)
__all__ = ["EngineDeadError", "PreparedRequest", "ProcessEngine"]


@dataclass(slots=True)
class _Assembly:
    """What this process keeps of a running request to rebuild full outputs from deltas."""

    prepared: PreparedRequest
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list | None = None


class ProcessEngine(EngineClient):
    def __init__(self, config: EngineConfig, idle_wait_s: float = 0.5):
        super().__init__()
        self.config = config
        self.idle_wait_s = idle_wait_s  # the child reports at least this often, so health stays fresh
        self.rules: RequestRules | None = None  # the backbone's, sent by the child once built
        self._assemblies: dict[str, _Assembly] = {}
        self._stats: EngineStats | None = None
        self._process = None
        self._commands = None  # our sending end
        self._send_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._stopping = False
        self.heads: dict = {}  # task -> head registered in the child (request checks read it)
        self.adapters: set[str] = set()  # adapter names registered in the child
        self._replies: dict[int, tuple[threading.Event, list]] = {}  # command token -> (done, [error])
        self._tokens = itertools.count()

    # --- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: EngineConfig) -> "ProcessEngine":
        return cls(config).start()

    def start(self) -> "ProcessEngine":
        """Start the child and wait until its engine is built; a load error is raised here."""
        from transformers import AutoTokenizer

        context = mp.get_context("spawn")  # a fresh interpreter: no inherited OpenMP or torch state
        child_commands, self._commands = context.Pipe(duplex=False)
        reports, child_reports = context.Pipe(duplex=False)
        self._process = context.Process(target=run_engine_process, name="polyhead-engine", daemon=True,
                                        args=(self.config, child_commands, child_reports, self.idle_wait_s))
        self._process.start()
        child_commands.close()  # only the child holds these now, so its death closes our ends
        child_reports.close()
        try:
            message = reports.recv()
        except EOFError:
            self._process.join(5)
            raise RuntimeError(f"the engine process exited while loading (exit code {self._process.exitcode})")
        if isinstance(message, LoadFailed):
            self._process.join(5)
            raise message.error
        ready: StartUp = message
        self.info, self.rules, self._stats = ready.info, ready.rules, ready.stats
        logger.info("engine process %d: %s", self._process.pid, self.info.kv_cache_summary or self.info.name)
        self.adapters = set(ready.adapters)  # the config's own (--lora-modules)
        self.tokenizer = AutoTokenizer.from_pretrained(self.info.tokenizer_folder)
        self._stopping, self.dead_reason = False, None
        self.last_step_at = time.monotonic()
        self._reader = threading.Thread(target=self._read, args=(reports,), name="polyhead-engine-reader",
                                        daemon=True)
        self._reader.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._process is None:
            return
        self._stopping = True
        self._send(Stop())
        self._process.join(timeout)
        if self._process.is_alive():  # stuck in a step: it ignores SIGTERM (see process_worker)
            self._process.kill()
            self._process.join(timeout)
        if self._reader is not None:
            self._reader.join(timeout)

    @property
    def is_running(self) -> bool:
        return (self._process is not None and self._process.is_alive() and self._reader is not None
                and self._reader.is_alive() and self.dead_reason is None)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        self.rules.check_fits(num_prompt_tokens, max_tokens)

    def register_head(self, task: str, head) -> None:
        blob = io.BytesIO()
        torch.save(head, blob)  # a whole module: the child needs its class, sizes and weights
        self._call(lambda token: RegisterHead(token, task, blob.getvalue()))
        self.heads[task] = head

    def register_adapter(self, name: str, folder: str) -> None:
        self._call(lambda token: RegisterAdapter(token, name, str(folder)))
        self.adapters.add(name)

    def _call(self, make_command, timeout: float = 300.0) -> None:
        """Send a command the child answers (made from its token), and wait for the answer; its error
        is a ValueError here."""
        token, done = next(self._tokens), threading.Event()
        self._replies[token] = (done, reply := [])
        command = make_command(token)
        try:
            if not self._send(command):
                raise EngineDeadError(self.dead_reason or "the engine process is gone")
            while not done.wait(0.5):
                if not self.is_running:
                    raise EngineDeadError(self.dead_reason or "the engine process is gone")
                if (timeout := timeout - 0.5) <= 0:
                    raise TimeoutError(f"the engine process did not answer {type(command).__name__} in time")
        finally:
            self._replies.pop(token, None)
        if reply and reply[0] is not None:
            raise ValueError(reply[0])

    def stats(self) -> EngineStats:
        return self._stats  # as of the child's last report

    # --- requests (event loop thread) ------------------------------------------------------------
    def _new_request(self, prompt: str | list[int], params: SamplingParams | PoolingParams, req_id: str,
                     **routing) -> PreparedRequest:
        return prepare_request(self.rules, self.tokenizer, self.heads, self.adapters, prompt, params, req_id,
                               Routing(**routing))

    def _send_add(self, prepared: PreparedRequest) -> None:
        wants_logprobs = getattr(prepared.params, "logprobs", None) is not None  # PoolingParams have none
        self._assemblies[prepared.req_id] = _Assembly(prepared, logprobs=[] if wants_logprobs else None)
        if not self._send(AddRequest(replace(prepared, prompt=None))):  # the text stays here
            self._assemblies.pop(prepared.req_id, None)
            self._fail(prepared.req_id, EngineDeadError(self.dead_reason or "the engine process is gone"))

    def _send_abort(self, req_id: str) -> None:
        # Nobody reads this request any more: forget it now; the child frees its blocks at its next step.
        self._assemblies.pop(req_id, None)
        self._streams.pop(req_id, None)
        self._send(AbortRequest(req_id))

    def _send(self, command) -> bool:
        try:
            with self._send_lock:
                self._commands.send(command)
            return True
        except (OSError, ValueError):  # the child is gone (broken pipe) or we closed the pipe
            return False

    # --- outputs (reader thread) -------------------------------------------------------------------
    def _read(self, reports) -> None:
        reason = None
        try:
            while True:
                message = reports.recv()
                if isinstance(message, LoopDied):
                    reason = message.reason
                    break
                if isinstance(message, CommandDone):  # the answer to a _call
                    done, reply = self._replies.get(message.token, (None, None))
                    if done is not None:
                        reply.append(message.error)
                        done.set()
                    continue
                self._on_report(message)
        except (EOFError, OSError):
            pass
        except BaseException as err:  # a bug here must still fail everyone, never hang them
            logger.exception("the engine reader died")
            reason = f"the engine reader died: {type(err).__name__}: {err}"
        finally:
            reports.close()
            if self._stopping and reason is None:
                self.dead_reason = "the engine stopped"
            else:
                self._process.join(2)
                self.dead_reason = reason or f"the engine process died (exit code {self._process.exitcode})"
                logger.error("%s", self.dead_reason)
            self._assemblies.clear()
            self._fail_all(self.dead_reason)

    def _on_report(self, report: StepReport) -> None:
        self.last_step_at = report.at
        self._stats = report.stats
        for req_id, why in report.rejected:
            self._assemblies.pop(req_id, None)
            self._fail(req_id, ValueError(why))
        outputs = []
        for delta in report.outputs:
            assembly = (self._assemblies.pop if delta.finished else self._assemblies.get)(delta.req_id, None)
            if assembly is None:
                continue  # aborted here already
            assembly.token_ids.extend(delta.new_token_ids)
            assembly.text = delta.text if delta.text is not None else assembly.text + delta.new_text
            if assembly.logprobs is not None:
                assembly.logprobs.extend(delta.new_logprobs)
            prepared = assembly.prepared
            outputs.append(RequestOutput(
                req_id=delta.req_id, prompt=prepared.prompt, prompt_token_ids=prepared.token_ids,
                text=assembly.text, token_ids=list(assembly.token_ids), new_text=delta.new_text,
                new_token_ids=delta.new_token_ids, finished=delta.finished, finish_reason=delta.finish_reason,
                stop_reason=delta.stop_reason, num_cached_tokens=delta.num_cached_tokens, error=delta.error,
                logprobs=None if assembly.logprobs is None else list(assembly.logprobs), pooled=delta.pooled))
        if report.stepped and self.on_step is not None:
            self.on_step(report.stats.last_step_num_tokens)
        self._deliver(outputs)
