"""Running a request's pooling jobs (classify, tag, embed and zero-shot score rows) on their
backbones' engines, under one deadline.

The rule it keeps: jobs in the same share group (same input, same backbone) start with the same
tokens, so only the group's first job (its leader) is queued at once; the rest follow as soon as
the leader is done, when the prompt's full blocks sit in the prefix cache and only their own
tail is computed. One prefill serves every task and every label of an input.
"""

import asyncio
import time
from dataclasses import dataclass

from polyhead.engine.outputs import RequestOutput
from polyhead.engine.params import PoolingParams
from polyhead.server.errors import APIError
from polyhead.server.registry import Backbone


@dataclass(slots=True)
class PoolingJob:
    backbone: Backbone  # whose engine runs it
    prompt: str | list[int]  # text (the engine tokenizes it) or token ids
    params: PoolingParams
    task: str  # for the engine's routing and the metrics
    adapter: str | None  # the task's LoRA adapter on that backbone, if any
    group: object  # jobs with equal groups share their prompt's prefix (one leader, the rest follow)


async def run_jobs(state, jobs: list[PoolingJob], routing: dict, timeout: float, request_id: str,
                   param: str = "input") -> list[RequestOutput]:
    """Every job's final output, in job order; 400 for a bad input, 408 past the deadline, 429 when full."""
    prepared = []
    for i, job in enumerate(jobs):
        try:
            prepared.append(job.backbone.engine.prepare(job.prompt, job.params, f"{request_id}-{i}",
                                                        **{**routing, "task": job.task, "adapter": job.adapter}))
        except ValueError as err:
            raise APIError(400, f"{param}: {err}", param) from err
    state.admit_total(len(prepared), sum(p.request.num_prompt_tokens for p in prepared))
    leaders: dict[object, asyncio.Event] = {}
    runs = []
    for job, item in zip(jobs, prepared):
        if job.group in leaders:
            runs.append(_follow(job.backbone.engine, item, leaders[job.group]))
        else:
            leaders[job.group] = done = asyncio.Event()
            runs.append(_lead(job.backbone.engine, item, done))
    start = time.monotonic()
    tasks = [asyncio.ensure_future(run) for run in runs]
    try:
        async with asyncio.timeout(timeout):
            finals = await asyncio.gather(*tasks)
    except TimeoutError:
        _record(state, jobs, "timeout", time.monotonic() - start)
        raise APIError(408, f"request exceeded its deadline of {timeout:g} s (timeout) and was aborted",
                       "timeout", "timeout") from None
    finally:
        for task in tasks:  # a timeout or a disconnect: abort whatever still runs
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failed = next((out for out in finals if out.finish_reason == "error"), None)
    if failed is not None:
        _record(state, jobs, "error", time.monotonic() - start)
        raise APIError(500, failed.error or "the engine failed on this request")
    _record(state, jobs, "ok", time.monotonic() - start)
    return finals


async def _lead(engine, item, done: asyncio.Event) -> RequestOutput:
    try:
        return await _last(engine.stream(item))
    finally:
        done.set()  # a failed or aborted leader must not hold the others back


async def _follow(engine, item, leader_done: asyncio.Event) -> RequestOutput:
    await leader_done.wait()
    return await _last(engine.stream(item))


async def _last(stream) -> RequestOutput:
    last = None
    try:
        async for output in stream:
            last = output
    finally:
        await stream.aclose()  # now, not at garbage collection: closing aborts the request
    return last


def _record(state, jobs: list[PoolingJob], status: str, seconds: float) -> None:
    for task in dict.fromkeys(job.task for job in jobs):  # one HTTP request, counted once per task
        state.metrics.record(task, status, None, seconds, 0)
