"""The child side of `ProcessEngine`: build the engine (either backend), then apply commands and
step until told to stop (or until the parent's end of the pipe closes). Messages both ways are
the dataclasses of engine/client/messages.py."""

import io
import pickle
import signal
import time
from typing import TYPE_CHECKING

from polyhead.config import EngineConfig
from polyhead.engine.client.messages import (
    AbortRequest,
    AddRequest,
    CommandDone,
    LoadFailed,
    LoopDied,
    OutputDelta,
    RegisterAdapter,
    RegisterHead,
    StartUp,
    StepReport,
    Stop,
)

if TYPE_CHECKING:
    from polyhead.engine.core.engine import Engine


def run_engine_process(config: EngineConfig, commands, reports, idle_wait_s: float,
                       digest_period_s: float | None = None) -> None:
    # Ctrl-C reaches the whole process group: the parent drains and then stops us, or we see its pipe close.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # imported here, in the child: the parent imports this module for its name and never needs torch
    from polyhead.engine.factory import build_engine

    try:
        engine = build_engine(config)
    except BaseException as err:  # noqa: BLE001 - re-raised in the parent
        reports.send(LoadFailed(_picklable(err)))
        return
    reports.send(StartUp(engine.info, engine.rules, engine.stats(), engine.adapter_names))
    try:
        _serve(engine, commands, reports, idle_wait_s, digest_period_s)
    except (EOFError, BrokenPipeError):
        pass  # the parent is gone
    except BaseException as err:
        reports.send(LoopDied(f"the engine process died: {type(err).__name__}: {err}"))
        raise


def _serve(engine: "Engine", commands, reports, idle_wait_s: float, digest_period_s: float | None) -> None:
    """digest_period_s: how often a report carries the engine's cache digest (None: never; only a
    Ray replica's router reads it)."""
    digest_due = 0.0
    while True:
        busy = engine.has_unfinished_requests()
        rejected: list[tuple[str, str]] = []
        got_commands = commands.poll(0 if busy else idle_wait_s)
        while got_commands:
            command = commands.recv()
            if isinstance(command, Stop):
                return
            if isinstance(command, AddRequest):
                try:
                    engine.admit(command.prepared)
                except ValueError as err:  # e.g. a duplicate req_id
                    rejected.append((command.prepared.req_id, str(err)))
            elif isinstance(command, AbortRequest):
                engine.abort_request(command.req_id)
            elif isinstance(command, RegisterHead | RegisterAdapter):  # answered on its own: the parent waits
                reports.send(CommandDone(command.token, _register(engine, command)))
            else:
                raise TypeError(f"unknown command {type(command).__name__}")
            got_commands = commands.poll(0)
        stepped = engine.has_unfinished_requests()
        outputs = [OutputDelta.of(out) for out in engine.step()] if stepped else []  # idle: just check in
        now = time.monotonic()
        digest = None
        if digest_period_s is not None and now >= digest_due:
            digest, digest_due = engine.cache_digest(), now + digest_period_s
        reports.send(StepReport(outputs, engine.stats(), now, stepped, rejected, digest))


def _register(engine: "Engine", command: RegisterHead | RegisterAdapter) -> str | None:
    """Register a task head or an adapter folder; the error, if any."""
    import torch

    try:
        if isinstance(command, RegisterHead):
            engine.register_head(command.task, torch.load(io.BytesIO(command.head), weights_only=False))
        else:
            engine.register_adapter(command.name, command.folder)
    except Exception as err:  # noqa: BLE001 - a bad head or adapter must not end the engine
        return str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
    return None


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.dumps(err)
        return err
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(err).__name__}: {err}")
