"""Running a request's pooling jobs (classify, tag, embed and zero-shot score rows) on their
backbones' engines, under one deadline.

The rule it keeps: jobs in the same share group (same input, same backbone) start with the same
tokens, so the group's first job leads and the rest are queued `after` it: the engine starts them
once the leader's prompt is computed, when its full blocks sit in the prefix cache and only their
own tails are left. One prefill serves every task and every label of an input.
"""

import asyncio
import time
from dataclasses import dataclass

from polyhead.engine.core.outputs import RequestOutput
from polyhead.engine.core.params import PoolingParams
from polyhead.server.errors import APIError, deadline_error
from polyhead.server.offload import input_size, tokenize_off_loop
from polyhead.server.registry import Backbone


@dataclass(slots=True)
class PoolingJob:
    backbone: Backbone  # whose engine runs it
    prompt: str | list[int]  # text (the engine tokenizes it) or token ids
    params: PoolingParams
    task: str  # for the engine's routing and the metrics
    adapter: str | None  # the task's LoRA adapter on that backbone, if any
    group: object  # jobs with equal groups (on one backbone) share their prompt's prefix: one leads


async def run_jobs(state, jobs: list[PoolingJob], routing: dict, timeout: float, request_id: str,
                   param: str = "input") -> list[RequestOutput]:
    """Every job's final output, in job order; 400 for a bad input, 408 past the deadline, 429 when full."""
    prepared, leaders = [], {}  # leaders: share group -> its first job's req_id
    size = sum(input_size(job.prompt) for job in jobs)  # many small inputs are one large request
    for i, job in enumerate(jobs):
        req_id = f"{request_id}-{i}"
        leader = leaders.setdefault((job.backbone.name, job.group), req_id)
        after = {"after": leader} if leader != req_id and job.backbone.has_prefix_cache else {}
        try:
            prepared.append(await tokenize_off_loop(size, job.backbone.engine.prepare, job.prompt,
                                                    job.params, req_id, **routing, task=job.task, adapter=job.adapter,
                                                    **after))
        except ValueError as err:
            raise APIError(400, f"{param}: {err}", param) from err
    state.admit_total(len(prepared), sum(p.num_prompt_tokens for p in prepared))
    start = time.monotonic()
    # queued in job order, so every leader reaches its engine before the jobs that follow it
    streams = [job.backbone.engine.stream(item) for job, item in zip(jobs, prepared)]
    tasks = [asyncio.ensure_future(_last(stream)) for stream in streams]
    try:
        async with asyncio.timeout(timeout):
            finals = await asyncio.gather(*tasks)
    except TimeoutError:
        _record(state, jobs, "timeout", time.monotonic() - start)
        raise deadline_error(timeout) from None
    finally:
        for task in tasks:  # a timeout or a disconnect: abort whatever still runs
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:  # also those whose task never started
            stream.close()
    if any(out.finish_reason == "timeout" for out in finals):  # the engine's deadline, the same one
        _record(state, jobs, "timeout", time.monotonic() - start)
        raise deadline_error(timeout)
    failed = next((out for out in finals if out.finish_reason == "error"), None)
    if failed is not None:
        _record(state, jobs, "error", time.monotonic() - start)
        raise APIError(500, failed.error or "the engine failed on this request", None, "engine_error")
    _record(state, jobs, "ok", time.monotonic() - start)
    return finals


async def _last(stream) -> RequestOutput:
    last = None
    async for output in stream:
        last = output
    return last


def _record(state, jobs: list[PoolingJob], status: str, seconds: float) -> None:
    for task in dict.fromkeys(job.task for job in jobs):  # one HTTP request, counted once per task
        state.metrics.record(task, status, None, seconds, 0)
