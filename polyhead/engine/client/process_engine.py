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

Supervision: if the child dies (killed, out of memory, a crash in native code), its end of the
pipe closes and the reader starts a new child, with backoff, registers the same task heads and
adapters in it, and sends it every request that had not finished. A request that had produced
tokens continues from them (its prompt and output so far are recomputed, as a preempted request
is); one that had produced nothing starts again. Requests submitted meanwhile wait for the new
child. A request that was in the child during two deaths fails (it may be what kills it), as
does everything once restarts keep failing, with EngineDeadError. The policy and the continuation
are engine/client/supervision.py's, shared with AsyncEngine.
"""

import io
import itertools
import logging
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

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
from polyhead.engine.client.supervision import (
    EngineRestartedError,
    Progress,
    RestartPolicy,
    idle_stats,
    take_repeat_victims,
)
from polyhead.engine.core.backend import RequestRules
from polyhead.engine.core.engine import prepare_request
from polyhead.engine.core.outputs import CacheDigest, EngineStats
from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.engine.core.request import PreparedRequest, Routing
from polyhead.models.text_tokenizer import TextTokenizer

logger = logging.getLogger(__name__)
__all__ = ["EngineDeadError", "EngineRestartedError", "PreparedRequest", "ProcessEngine"]


@dataclass(slots=True)
class _Child:
    process: mp.Process
    commands: Connection  # our sending end
    reports: Connection  # our receiving end


class ProcessEngine(EngineClient):
    def __init__(self, config: EngineConfig, idle_wait_s: float = 0.5, digest_period_s: float | None = None):
        super().__init__()
        self.config = config
        self.idle_wait_s = idle_wait_s  # the child reports at least this often, so health stays fresh
        self.digest_period_s = digest_period_s  # the child sends its cache digest this often (None: never)
        self.rules: RequestRules | None = None  # the backbone's, sent by the child once built
        self._assemblies: dict[str, Progress] = {}  # what this process rebuilds full outputs from deltas with
        self._stats: EngineStats | None = None
        self._digest = CacheDigest()
        self._process = None
        self._commands = None  # our sending end
        self._send_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._stopping = False
        self._held: list[PreparedRequest] = []  # submitted while restarting
        self._lock = threading.RLock()  # _assemblies and _held between the event loop and a restart
        self._policy = RestartPolicy()
        self.heads: dict = {}  # task -> head registered in the child (request checks read it)
        self.adapters: set[str] = set()  # adapter names registered in the child
        self._adapter_folders: dict[str, str] = {}  # registered here (a new child gets them again)
        self._replies: dict[int, tuple[threading.Event, list]] = {}  # command token -> (done, [error])
        self._tokens = itertools.count()

    # --- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: EngineConfig, digest_period_s: float | None = None) -> "ProcessEngine":
        return cls(config, digest_period_s=digest_period_s).start()

    def start(self) -> "ProcessEngine":
        """Start the child and wait until its engine is built; a load error is raised here."""
        child, ready = self._spawn()
        self.info, self.rules, self._stats = ready.info, ready.rules, ready.stats
        self.adapters = set(ready.adapters)  # the config's own (--lora-modules)
        # without transformers, which would import torch into this process for nothing
        self.tokenizer = TextTokenizer(self.info.tokenizer_folder)
        self._stopping, self.dead_reason = False, None
        self._attach(child)
        return self

    def _spawn(self) -> tuple[_Child, StartUp]:
        context = mp.get_context("spawn")  # a fresh interpreter: no inherited OpenMP or torch state
        child_commands, commands = context.Pipe(duplex=False)
        reports, child_reports = context.Pipe(duplex=False)
        process = context.Process(target=run_engine_process, name="polyhead-engine", daemon=True,
                                  args=(self.config, child_commands, child_reports, self.idle_wait_s,
                                        self.digest_period_s))
        process.start()
        child_commands.close()  # only the child holds these now, so its death closes our ends
        child_reports.close()
        try:
            message = reports.recv()
        except EOFError:
            process.join(5)
            raise RuntimeError(f"the engine process exited while loading (exit code {process.exitcode})") from None
        if isinstance(message, LoadFailed):
            process.join(5)
            raise message.error
        logger.info("engine process %d: %s", process.pid, message.info.kv_cache_summary or message.info.name)
        return _Child(process, commands, reports), message

    def _attach(self, child: _Child) -> None:
        self._process, self._commands = child.process, child.commands
        self.last_step_at = time.monotonic()
        self._reader = threading.Thread(target=self._read, args=(child.reports,), name="polyhead-engine-reader",
                                        daemon=True)
        self._reader.start()

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
                and self._reader.is_alive() and self.dead_reason is None and not self._restarting)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        self.rules.check_fits(num_prompt_tokens, max_tokens)

    def register_head(self, task: str, head) -> None:
        blob = _head_bytes(head)
        self._call(lambda token: RegisterHead(token, task, blob))
        self.heads[task] = head

    def register_adapter(self, name: str, folder: str) -> None:
        self._call(lambda token: RegisterAdapter(token, name, str(folder)))
        self.adapters.add(name)
        self._adapter_folders[name] = str(folder)

    def _call(self, make_command, timeout: float = 300.0, while_restarting: bool = False) -> None:
        """Send a command the child answers (made from its token), and wait for the answer; its error
        is a ValueError here. A restart registers in a child that is not yet serving requests."""
        token, done = next(self._tokens), threading.Event()
        self._replies[token] = (done, reply := [])
        command = make_command(token)
        try:
            if not self._send(command):
                raise EngineDeadError(self.dead_reason or "the engine process is gone")
            while not done.wait(0.5):
                alive = self._process.is_alive() and self._reader.is_alive() and self.dead_reason is None
                if not (alive if while_restarting else self.is_running):
                    raise EngineDeadError(self.dead_reason or "the engine process is gone")
                if (timeout := timeout - 0.5) <= 0:
                    raise TimeoutError(f"the engine process did not answer {type(command).__name__} in time")
        finally:
            self._replies.pop(token, None)
        if reply and reply[0] is not None:
            raise ValueError(reply[0])

    def stats(self) -> EngineStats:
        return self._stats  # as of the child's last report

    @property
    def adapter_names(self) -> list[str]:
        return sorted(self.adapters)

    def cache_digest(self) -> CacheDigest:
        return self._digest  # as of the child's last digest (every digest_period_s; none without one)

    # --- requests (event loop thread) ------------------------------------------------------------
    def _new_request(self, prompt: str | list[int], params: SamplingParams | PoolingParams, req_id: str,
                     **routing) -> PreparedRequest:
        return prepare_request(self.rules, self.tokenizer, self.heads, self.adapters, prompt, params, req_id,
                               Routing(**routing))

    def _send_add(self, prepared: PreparedRequest) -> None:
        wants_logprobs = getattr(prepared.params, "logprobs", None) is not None  # PoolingParams have none
        with self._lock:
            self._assemblies[prepared.req_id] = Progress(prepared, logprobs=[] if wants_logprobs else None)
            if self._restarting:
                self._held.append(prepared)  # sent once the new child is up
                return
            sent = self._send(AddRequest(replace(prepared, prompt=None)))  # the text stays here
        if not sent and not self._restarting and self.dead_reason is not None:
            self._assemblies.pop(prepared.req_id, None)
            self._fail(prepared.req_id, EngineDeadError(self.dead_reason))
        # else: the child just died; the restart sends it (it is in _assemblies)

    def _send_abort(self, req_id: str) -> None:
        # Nobody reads this request any more: forget it now; the child frees its blocks at its next step.
        with self._lock:
            self._assemblies.pop(req_id, None)
            self._streams.pop(req_id, None)
            self._held = [p for p in self._held if p.req_id != req_id]
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
                self._give_up(self.dead_reason)
            else:
                self._process.join(2)
                reason = reason or f"the engine process died (exit code {self._process.exitcode})"
                logger.error("%s; starting a new one", reason)
                self._restart(reason)

    # --- supervision (the dead child's reader thread) --------------------------------------------
    def _restart(self, reason: str) -> None:
        """Replace a dead child: start a new one (with backoff), register the heads and adapters
        again, then send it every unfinished request and those submitted meanwhile."""
        with self._lock:
            self._restarting = True
        if (crash_loop := self._policy.crash_loop(reason)) is not None:  # restarting does not help
            self._give_up(crash_loop)
            return
        self._stats = idle_stats(self._stats)  # the dead engine's figures no longer hold
        with self._lock:
            for req_id, error in take_repeat_victims(self._assemblies, reason):
                self._fail(req_id, error)
        backoff = self._policy.backoff_s
        for attempt, wait in enumerate(backoff, start=1):
            time.sleep(wait)
            if self._stopping:
                self._give_up("the engine stopped")
                return
            try:
                child, ready = self._spawn()
            except Exception as err:  # noqa: BLE001 - retried, then given up
                logger.error("engine restart %d/%d failed: %s", attempt, len(backoff), err)
                continue
            self._stats = ready.stats
            self._attach(child)
            try:
                self._register_again()
            except Exception as err:  # noqa: BLE001 - the new child died or refused: try another
                logger.error("engine restart %d/%d: registering heads and adapters failed: %s", attempt,
                             len(backoff), err)
                child.process.kill()
                return  # its reader sees the death and restarts again
            self.num_restarts += 1
            self._resend()
            logger.info("engine process %d replaces the dead one (restart %d)", child.process.pid, self.num_restarts)
            return
        self._give_up(f"{reason}; {len(backoff)} restarts failed")

    def _register_again(self) -> None:
        for task, head in list(self.heads.items()):
            blob = _head_bytes(head)
            self._call(lambda token, task=task, blob=blob: RegisterHead(token, task, blob),
                       while_restarting=True)
        for name, folder in list(self._adapter_folders.items()):
            self._call(lambda token, name=name, folder=folder: RegisterAdapter(token, name, folder),
                       while_restarting=True)

    def _resend(self) -> None:
        with self._lock:
            held = {p.req_id for p in self._held}
            for req_id, assembly in list(self._assemblies.items()):
                if req_id in held:
                    continue
                resumed = assembly.continuation(self.tokenizer)
                if resumed is None:  # its last report was lost with the child: it had finished
                    del self._assemblies[req_id]
                    self._deliver([assembly.final_output()])
                    continue
                self._send(AddRequest(replace(resumed, prompt=None)))  # the text stays here
            for prepared in self._held:
                self._send(AddRequest(replace(prepared, prompt=None)))
            self._held = []
            self._restarting = False

    def _give_up(self, reason: str) -> None:
        with self._lock:
            self.dead_reason = reason
            self._restarting = False
            self._held = []
            self._assemblies.clear()
        self._fail_all(reason)

    def _on_report(self, report: StepReport) -> None:
        self.last_step_at = report.at
        self._stats = report.stats
        if report.digest is not None:
            self._digest = report.digest
        for req_id, why in report.rejected:
            self._assemblies.pop(req_id, None)
            self._fail(req_id, ValueError(why))
        outputs = []
        for delta in report.outputs:
            assembly = (self._assemblies.pop if delta.finished else self._assemblies.get)(delta.req_id, None)
            if assembly is not None:  # else aborted here already
                outputs.append(assembly.apply(delta))
        if report.stepped and self.on_step is not None:
            self.on_step(report.stats.last_step_num_tokens)
        self._deliver(outputs)


def _head_bytes(head) -> bytes:
    """A head module as the child loads it: its class, sizes and weights, as torch.save writes them."""
    import torch  # here, not at the top: a server without trained heads never loads torch in this process

    blob = io.BytesIO()
    torch.save(head, blob)
    return blob.getvalue()
