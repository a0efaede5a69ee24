"""/v1/batches, as OpenAI's clients call it (`client.batches.create/retrieve/list/cancel`): a batch
job runs an uploaded file's lines through this server's own app in-process (polyhead/batch/runner.py,
the runner `polyhead batch` uses), beside the online traffic and under the same queue limits.

A job is an OpenAI Batch object kept as `<state>/batches/<id>.json`; while it runs its lines go to
`<id>.output.jsonl` (answered 2xx) and `<id>.errors.jsonl` (the rest), which become its output and
error files when it ends. A server stopped mid-job leaves the job in progress, and the next start
resumes it, skipping the lines already written. A cancel aborts the lines in flight; the files keep
what had finished.
"""

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path

from fastapi import APIRouter, Request
from pydantic import Field, field_validator

from polyhead.batch.lines import BATCH_URLS, is_success, keys_written, line_key, read_lines
from polyhead.batch.runner import BatchRunner, ServerShuttingDown
from polyhead.server.errors import APIError
from polyhead.server.files import FileStore, page
from polyhead.server.protocol import RequestBody
from polyhead.server.state_dir import StateDir

logger = logging.getLogger(__name__)
router = APIRouter()

COMPLETION_WINDOWS = ("24h",)  # OpenAI's only window; polyhead runs a job as soon as it is created
RUNNING = ("validating", "in_progress", "finalizing")  # a restart resumes these


class CreateBatchRequest(RequestBody):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = Field(default=None, max_length=16)  # OpenAI's limit: 16 pairs

    @field_validator("metadata")
    @classmethod
    def _valid_unicode_metadata(cls, value):  # RequestBody's check reads strings and lists, not dicts
        for text in [*(value or {}), *(value or {}).values()]:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("has a lone surrogate; text must be valid Unicode") from None
        return value


class BatchManager:
    """The batch jobs of one server: created, run as tasks on its event loop, cancelled, resumed."""

    def __init__(self, app, state_dir: StateDir, max_concurrency: int, api_key: str | None):
        self.app, self.state_dir = app, state_dir
        self.max_concurrency, self.api_key = max_concurrency, api_key
        self.files = FileStore(state_dir)
        self.jobs: dict[str, dict] = {}  # id -> the Batch object
        self.tasks: dict[str, asyncio.Task] = {}
        self.line_order: dict[str, dict[str, int]] = {}  # job id -> line key -> its input position
        self.is_stopping = False

    @property
    def folder(self) -> Path:
        return self.state_dir.sub("batches")

    def start(self) -> None:
        """Load the jobs an earlier run left and resume those still running (on the app's event loop)."""
        if self.state_dir.is_temporary:
            return
        for path in sorted(self.folder.glob("batch_*.json")):
            job = json.loads(path.read_text())
            self.jobs[job["id"]] = job
            if job["status"] in RUNNING:
                self._launch(job)
            elif job["status"] == "cancelling":
                self._finish(job, "cancelled")

    async def stop(self) -> None:
        """Stop every running job where it is (each resumes at the next start), then clean up."""
        self.is_stopping = True
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.state_dir.cleanup()

    def create(self, body: CreateBatchRequest) -> dict:
        if body.endpoint not in BATCH_URLS:
            raise APIError(400, f"endpoint must be one of {', '.join(BATCH_URLS)}, got {body.endpoint!r}", "endpoint",
                           "invalid_value")
        if body.completion_window not in COMPLETION_WINDOWS:
            raise APIError(400, f"completion_window must be {' or '.join(COMPLETION_WINDOWS)}, got "
                           f"{body.completion_window!r}", "completion_window", "invalid_value")
        stored = self.files.require(body.input_file_id, "input_file_id")
        if stored.purpose != "batch":
            raise APIError(400, f"file {stored.id} has purpose {stored.purpose!r}; a batch's input file is uploaded "
                           "with purpose batch", "input_file_id", "invalid_value")
        now = int(time.time())
        job = {"id": f"batch_{uuid.uuid4().hex}", "object": "batch", "endpoint": body.endpoint, "errors": None,
               "input_file_id": stored.id, "completion_window": body.completion_window, "status": "validating",
               "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
               "expires_at": now + 24 * 3600, "finalizing_at": None, "completed_at": None, "failed_at": None,
               "expired_at": None, "cancelling_at": None, "cancelled_at": None,
               "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.metadata}
        self.jobs[job["id"]] = job
        self._save(job)
        self._launch(job)
        return job

    def get(self, batch_id: str) -> dict:
        job = self.jobs.get(batch_id)
        if job is None:
            raise APIError(404, f"no batch with id {batch_id!r}", "batch_id", "batch_not_found")
        return job

    def list(self) -> list[dict]:
        return sorted(self.jobs.values(), key=lambda job: (job["created_at"], job["id"]), reverse=True)

    def cancel(self, batch_id: str) -> dict:
        job = self.get(batch_id)
        if job["status"] in ("cancelling", "cancelled"):
            return job
        if job["status"] not in ("validating", "in_progress"):
            raise APIError(409, f"batch {batch_id} is {job['status']}; only a validating or in-progress batch can "
                           "be cancelled", "batch_id", "invalid_state")
        job.update(status="cancelling", cancelling_at=int(time.time()))
        self._save(job)
        task = self.tasks.get(batch_id)
        if task is not None:
            task.cancel()
        return job

    def _launch(self, job: dict) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job))
        self.tasks[job["id"]] = task
        task.add_done_callback(lambda _: self._ended(job))

    def _ended(self, job: dict) -> None:
        """A job's task is done: a cancel (which may come before the task first runs) is finished here."""
        self.tasks.pop(job["id"], None)
        if job["status"] == "cancelling" and not self.is_stopping:
            self._finish(job, "cancelled")

    async def _run(self, job: dict) -> None:
        outputs, errors = self._working_paths(job)
        try:
            path = self.files.data_path(job["input_file_id"])
            if not path.exists():
                raise FileNotFoundError(f"input file {job['input_file_id']} was deleted before the batch ran")
            lines = list(read_lines(path, job["endpoint"]))
            self.line_order[job["id"]] = {line.key: i for i, line in enumerate(lines)}
            done = keys_written(outputs) | keys_written(errors)
            counts = job["request_counts"]
            counts.update(total=len(lines), completed=_num_lines(outputs), failed=_num_lines(errors))
            job.update(status="in_progress", in_progress_at=job["in_progress_at"] or int(time.time()))
            self._save(job)
            runner = BatchRunner(self.app, self.max_concurrency, self.api_key)
            with outputs.open("a", encoding="utf-8") as good, errors.open("a", encoding="utf-8") as bad:
                def write(item: dict) -> None:
                    file = good if is_success(item) else bad
                    file.write(json.dumps(item) + "\n")
                    file.flush()

                def count(item: dict) -> None:
                    counts["completed" if is_success(item) else "failed"] += 1

                try:
                    await runner.run(lines, write, frozenset(done), on_line_done=count, write_all_if_interrupted=True)
                finally:
                    await runner.aclose()
        except (asyncio.CancelledError, ServerShuttingDown):
            return  # cancelled: _ended finishes it; stopping: it stays as it is, and resumes at the next start
        except Exception as err:  # the job fails with the reason; the server goes on
            logger.exception("batch %s failed", job["id"])
            job.update(status="failed", failed_at=int(time.time()),
                       errors={"object": "list", "data": [{"code": "batch_failed", "message": str(err),
                                                           "param": None, "line": None}]})
            self._save(job)
            return
        self._finish(job, "completed")

    def _finish(self, job: dict, status: str) -> None:
        """Turn the working files into the job's output and error files."""
        job.update(status="finalizing", finalizing_at=int(time.time()))
        outputs, errors = self._working_paths(job)
        order = self.line_order.pop(job["id"], {})
        for path in (outputs, errors):  # a stop or a cancel can leave later lines written before earlier ones
            _sort_lines(path, order)
        job["output_file_id"] = self.files.add_path(outputs, f"{job['id']}_output.jsonl", "batch_output").id
        if errors.exists() and errors.stat().st_size:
            job["error_file_id"] = self.files.add_path(errors, f"{job['id']}_error.jsonl", "batch_output").id
        else:
            errors.unlink(missing_ok=True)
        job.update(status=status, **{f"{status}_at": int(time.time())})
        self._save(job)

    def _working_paths(self, job: dict) -> tuple[Path, Path]:
        return self.folder / f"{job['id']}.output.jsonl", self.folder / f"{job['id']}.errors.jsonl"

    def _save(self, job: dict) -> None:
        path = self.folder / f"{job['id']}.json"
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps(job))
        partial.replace(path)  # a reader never sees half a job


def _sort_lines(path: Path, order: dict[str, int]) -> None:
    """Rewrite a job's working file in input order (lines it cannot place keep their place at the end)."""
    raw = path.read_bytes().splitlines(keepends=True) if path.exists() else []
    keyed = [(order.get(line_key(item.get("custom_id"), item.get("line")), len(order)), i, line)
             for i, (line, item) in enumerate((line, json.loads(line)) for line in raw)]
    path.write_bytes(b"".join(line for *_, line in sorted(keyed)))


def _num_lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _batches(request: Request) -> BatchManager:
    return request.app.state.batches


@router.post("/v1/batches")
async def create_batch(body: CreateBatchRequest, request: Request):
    return _batches(request).create(body)


@router.get("/v1/batches")
async def list_batches(request: Request, limit: int = 20, after: str | None = None):
    return page(_batches(request).list(), limit, after)


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, request: Request):
    return _batches(request).get(batch_id)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request):
    return _batches(request).cancel(batch_id)

