"""/v1/files, as OpenAI's clients call it (`client.files.create/retrieve/list/content/delete`), for
batch jobs: uploads with purpose "batch" and the batches' output and error files.

Files live under the server's state directory (`--state-dir`, polyhead/server/batches.py), one data
file and one JSON card per id: `<state>/files/<id>.data` and `<id>.json`.
"""

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from polyhead.server.errors import APIError
from polyhead.server.state_dir import StateDir

router = APIRouter()

UPLOAD_PURPOSES = ("batch",)  # what clients may upload; the server writes "batch_output" files itself
MAX_LIST_LIMIT = 10_000


@dataclass(slots=True)
class StoredFile:
    id: str  # "file-<hex>"
    bytes: int  # size of its data
    created_at: int  # unix seconds
    filename: str  # as uploaded, or the batch's output name
    purpose: str  # batch (an upload) or batch_output (written by a batch)

    def card(self) -> dict:
        """OpenAI's FileObject."""
        return {**asdict(self), "object": "file", "status": "processed", "status_details": None}


class FileStore:
    """The files of one state directory (made on first use)."""

    def __init__(self, state_dir: StateDir):
        self.state_dir = state_dir

    @property
    def root(self) -> Path:
        return self.state_dir.sub("files")

    def data_path(self, file_id: str) -> Path:
        return self.root / f"{file_id}.data"

    def add_upload(self, upload, filename: str, purpose: str) -> StoredFile:
        """Store an open binary file object's contents."""
        file_id = f"file-{uuid.uuid4().hex}"
        partial = self.root / f"{file_id}.part"
        with partial.open("wb") as out:
            shutil.copyfileobj(upload, out)
        return self.add_path(partial, filename, purpose, file_id)

    def add_path(self, path: Path, filename: str, purpose: str, file_id: str | None = None) -> StoredFile:
        """Move a file written elsewhere (a batch's output) into the store."""
        file_id = file_id or f"file-{uuid.uuid4().hex}"
        os.replace(path, self.data_path(file_id))
        stored = StoredFile(file_id, self.data_path(file_id).stat().st_size, int(time.time()), filename, purpose)
        (self.root / f"{file_id}.json").write_text(json.dumps(asdict(stored)))  # the card last: then it is listed
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        if not _is_id(file_id, "file-"):
            return None
        card = self.root / f"{file_id}.json"
        return StoredFile(**json.loads(card.read_text())) if card.exists() else None

    def require(self, file_id: str, param: str = "file_id") -> StoredFile:
        stored = self.get(file_id)
        if stored is None:
            raise APIError(404, f"no file with id {file_id!r}", param, "file_not_found")
        return stored

    def list(self, purpose: str | None = None) -> list[StoredFile]:
        """Newest first, as OpenAI lists them."""
        files = [StoredFile(**json.loads(card.read_text())) for card in self.root.glob("file-*.json")]
        files = [f for f in files if purpose is None or f.purpose == purpose]
        return sorted(files, key=lambda f: (f.created_at, f.id), reverse=True)

    def delete(self, file_id: str) -> None:
        (self.root / f"{file_id}.json").unlink(missing_ok=True)
        self.data_path(file_id).unlink(missing_ok=True)


def _is_id(value: str, prefix: str) -> bool:
    """Ids name files in the directory: only ours, never a path."""
    rest = value.removeprefix(prefix)
    return value.startswith(prefix) and len(rest) == 32 and all(c in "0123456789abcdef" for c in rest)


def page(cards: list[dict], limit: int, after: str | None) -> dict:
    """OpenAI's cursor page: the `limit` cards after the one whose id is `after`."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise APIError(400, f"limit must be in [1, {MAX_LIST_LIMIT}], got {limit}", "limit", "invalid_value")
    ids = [card["id"] for card in cards]
    start = ids.index(after) + 1 if after in ids else 0
    data = cards[start:start + limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": start + limit < len(cards)}


def _store(request: Request) -> FileStore:
    return request.app.state.batches.files


@router.post("/v1/files")
async def upload_file(request: Request, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]):
    if purpose not in UPLOAD_PURPOSES:
        raise APIError(400, f"purpose {purpose!r} is not served: this server takes files for batch jobs "
                       f"(purpose {', '.join(UPLOAD_PURPOSES)})", "purpose", "invalid_value")
    filename = (file.filename or "upload.jsonl").encode("utf-8", "replace").decode()  # echoed in every card
    stored = _store(request).add_upload(file.file, filename, purpose)
    return stored.card()


@router.get("/v1/files")
async def list_files(request: Request, purpose: str | None = None, limit: int = MAX_LIST_LIMIT,
                     after: str | None = None):
    return page([stored.card() for stored in _store(request).list(purpose)], limit, after)


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request):
    return _store(request).require(file_id).card()


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request):
    store = _store(request)
    stored = store.require(file_id)
    return FileResponse(store.data_path(stored.id), media_type="application/jsonl", filename=stored.filename)


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request):
    store = _store(request)
    stored = store.require(file_id)
    store.delete(stored.id)
    return {"id": stored.id, "object": "file", "deleted": True}
