"""Running batch lines through the server's own request handling, in-process.

Each line is POSTed to the FastAPI app over an in-memory ASGI transport, so a body means in a batch
exactly what it means over HTTP (validation, task routing, errors, the prefix sharing of n > 1),
with no socket in between. Up to `max_concurrency` lines are in flight at once, enough to keep the
engine's batch full; their outputs are written in input order, each as soon as every line before
it is written. A 429 (the server's queue full, e.g. under online traffic beside a server batch) is
retried with backoff; every other answer is the line's result, except the 503 of a server that is
shutting down, which stops the run with the line unwritten (a server batch resumes after a restart).
"""

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

from polyhead.batch.lines import BatchLine, error_line, is_success, response_line

RETRY_429_TIMES = 600  # backoff capped at 1 s: a line waits about ten minutes for room before its 429 stands


class ServerShuttingDown(Exception):
    """The app refused a line because it is draining: the run stops, and the line stays unwritten."""


@dataclass(slots=True)
class BatchCounts:
    total: int = 0  # lines run by this call (lines already written by an earlier run are not counted)
    completed: int = 0  # answered 2xx
    failed: int = 0  # answered otherwise, or never a request (a bad line)


class BatchRunner:
    def __init__(self, app, max_concurrency: int, api_key: str | None = None):
        # raise_app_exceptions=False: a handler's bug is the 500 response the server would send, not a crash
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://polyhead-batch", timeout=None)
        self.max_concurrency = max_concurrency
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"

    async def run(self, lines: Iterable[BatchLine], write: Callable[[dict], None], skip: frozenset[str] = frozenset(),
                  on_line_done: Callable[[dict], None] | None = None,
                  write_all_if_interrupted: bool = False) -> BatchCounts:
        """Run every line whose key is not in `skip`; `write(output)` each in input order. Interrupted
        (cancelled, or the server draining), it aborts the lines in flight; the lines done after the
        first unfinished one are dropped, so a rerun's appended lines keep the output in input order,
        unless `write_all_if_interrupted` (a server batch, which orders its files when it ends)."""
        window = asyncio.Semaphore(self.max_concurrency)
        finished: dict[int, dict] = {}  # position -> output, until every earlier one is written
        next_to_write = 0
        counts = BatchCounts()
        in_flight: set[asyncio.Task] = set()
        failures: list[BaseException] = []  # a line that raised (the server shutting down): start no more

        def write_ready() -> None:
            nonlocal next_to_write
            while next_to_write in finished:
                write(finished.pop(next_to_write))
                next_to_write += 1

        async def run_one(position: int, line: BatchLine) -> None:
            try:
                output = error_line(line) if line.error_code else await self._answer(line)
            except Exception as err:
                failures.append(err)
                raise
            finally:
                window.release()
            counts.completed += is_success(output)
            counts.failed += not is_success(output)
            finished[position] = output
            write_ready()
            if on_line_done is not None:
                on_line_done(output)

        try:
            for line in lines:
                if line.key in skip:
                    continue
                await window.acquire()
                if failures:
                    window.release()
                    break
                task = asyncio.create_task(run_one(counts.total, line))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                counts.total += 1
            await asyncio.gather(*in_flight)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            if write_all_if_interrupted:
                for position in sorted(finished):
                    write(finished.pop(position))
        return counts

    async def _answer(self, line: BatchLine) -> dict:
        content = json.dumps(line.body).encode()  # ASCII escapes: a lone surrogate reaches the server's check
        for attempt in range(RETRY_429_TIMES + 1):
            response = await self.client.post(line.url, content=content, headers=self.headers)
            if response.status_code != 429 or attempt == RETRY_429_TIMES:
                break
            await asyncio.sleep(min(1.0, 0.02 * 2**attempt))
        try:
            body = response.json()
        except ValueError:
            body = {"error": {"message": response.text, "type": "server_error", "param": None, "code": None}}
        error = body.get("error") if isinstance(body, dict) else None
        if response.status_code == 503 and isinstance(error, dict) and error.get("code") == "shutting_down":
            raise ServerShuttingDown(error.get("message"))
        return response_line(line, response.status_code, body)

    async def aclose(self) -> None:
        await self.client.aclose()
