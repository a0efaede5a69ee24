"""The child side of `ProcessEngine`: build the engine, then apply commands and step until told
to stop (or until the parent's end of the pipe closes). What crosses back is lists and small
dataclasses, never tensors.
"""

import io
import pickle
import signal
import time
from dataclasses import dataclass

import torch

from polyhead.config import EngineConfig
from polyhead.engine.core.engine import LLMEngine
from polyhead.engine.core.outputs import EngineStats, RequestOutput


@dataclass(slots=True)
class OutputDelta:
    """One request's progress in one step."""

    req_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    stop_reason: int | str | None
    new_logprobs: list  # TokenLogprobs of new_token_ids; [] when the request asked for none
    num_cached_tokens: int
    error: str | None
    text: str | None  # the whole text, on the last output only (a stop string may have cut it)
    pooled: list[float] | list[list[float]] | float | None  # a pooling request's result


@dataclass(slots=True)
class StepReport:
    """What the child sends after each step, and at least every idle_wait_s while idle."""

    outputs: list[OutputDelta]
    stats: EngineStats
    at: float  # time.monotonic() when it stepped or checked in (one clock for all processes here)
    stepped: bool  # False for an idle check-in or a report of commands applied
    rejected: list[tuple[str, str]]  # (req_id, why) for requests the engine refused to admit


def run_engine_process(config: EngineConfig, commands, reports, idle_wait_s: float) -> None:
    # Ctrl-C reaches the whole process group: the parent drains and then stops us, or we see its pipe close.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        engine = LLMEngine(config)
    except BaseException as err:  # noqa: BLE001 - re-raised in the parent
        reports.send(("failed", _picklable(err)))
        return
    reports.send(("ready", engine.limits, str(engine.model_folder), engine.stats(),
                  engine.model_config.hidden_size, engine.kv_cache.enable_prefix_caching, engine.lora.names,
                  engine.kv_cache_plan.describe()))
    try:
        _serve(engine, commands, reports, idle_wait_s)
    except (EOFError, BrokenPipeError):
        pass  # the parent is gone
    except BaseException as err:
        reports.send(("died", f"the engine process died: {type(err).__name__}: {err}"))
        raise


def _serve(engine: LLMEngine, commands, reports, idle_wait_s: float) -> None:
    while True:
        busy = engine.has_unfinished_requests()
        rejected: list[tuple[str, str]] = []
        got_commands = commands.poll(0 if busy else idle_wait_s)
        while got_commands:
            command = commands.recv()
            if command[0] == "stop":
                return
            if command[0] == "add":
                req_id, token_ids, params, routing = command[1]
                try:
                    engine.admit(engine.new_request(token_ids, params, req_id, **routing))
                except ValueError as err:  # e.g. a duplicate req_id
                    rejected.append((req_id, str(err)))
            elif command[0] == "abort":
                engine.abort_request(command[1])
            else:  # a registration, answered on its own so the parent can wait for it
                reports.send(("done", command[1], _register(engine, command[0], *command[2:])))
            got_commands = commands.poll(0)
        if engine.has_unfinished_requests():
            outputs = [_delta(out) for out in engine.step()]
            reports.send(("step", StepReport(outputs, engine.stats(), time.monotonic(), True, rejected)))
        else:  # idle: check in, and let the parent see the blocks that aborts freed
            reports.send(("step", StepReport([], engine.stats(), time.monotonic(), False, rejected)))


def _register(engine: LLMEngine, what: str, name: str, payload) -> str | None:
    """Register a task head (a module saved by torch.save) or an adapter folder; the error, if any."""
    try:
        if what == "register_head":
            engine.register_head(name, torch.load(io.BytesIO(payload), weights_only=False))
        elif what == "register_adapter":
            engine.register_adapter(name, payload)
        else:
            return f"unknown command {what!r}"
    except Exception as err:  # noqa: BLE001 - a bad head or adapter must not end the engine
        return str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
    return None


def _delta(out: RequestOutput) -> OutputDelta:
    num_new = len(out.new_token_ids)
    new_logprobs = [] if out.logprobs is None else out.logprobs[len(out.token_ids) - num_new:]
    return OutputDelta(out.req_id, out.new_token_ids, out.new_text, out.finished, out.finish_reason,
                       out.stop_reason, new_logprobs, out.num_cached_tokens, out.error,
                       out.text if out.finished else None, out.pooled)


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.dumps(err)
        return err
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(err).__name__}: {err}")
