"""The Batch API's line formats, as OpenAI (and vLLM's run_batch) read and write them.

Input, one JSON object a line: {"custom_id": "...", "method": "POST", "url": "/v1/chat/completions",
"body": {...}}. Output, one a line, in input order: {"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}. A request the server answered, a 400 included, has a `response`; a
line that never became a request (not JSON, no custom_id or a repeated one, a url not served) has
`error` instead, {"code", "message"}, and its 1-based `line` (a polyhead extra: a rerun recognizes
such a line by its number, since its custom_id may be missing or another line's).
"""

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# what a batch line may call: every endpoint whose body is a plain JSON request
BATCH_URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/classify", "/v1/tag",
              "/v1/score", "/v1/rerank")


@dataclass(slots=True)
class BatchLine:
    line_number: int  # 1-based, in the input file
    custom_id: str | None  # the caller's id; None when the line has none that can be read
    url: str | None  # the endpoint path, one of BATCH_URLS
    body: dict | None  # the request body, passed to the endpoint as is
    error_code: str | None = None  # why the line cannot run (it becomes an error line); None: it can
    error_message: str | None = None

    @property
    def key(self) -> str:
        """What a rerun recognizes the line by in the output: a bad line by its number, others by custom_id."""
        return line_key(self.custom_id, self.line_number if self.error_code else None)


def line_key(custom_id: str | None, line_number: int | None) -> str:
    return f"line:{line_number}" if line_number is not None else f"id:{custom_id}"


def parse_line(text: str, line_number: int, seen_ids: set[str], endpoint: str | None = None) -> BatchLine:
    """One input line; a line that cannot run carries its error_code. `seen_ids` collects custom_ids
    (a repeated one is an error, as OpenAI's is); `endpoint`, if given, is the one url lines may name."""
    try:
        item = json.loads(text)
    except ValueError as err:
        return _bad(line_number, None, "invalid_json", f"line {line_number} is not valid JSON: {err}")
    if not isinstance(item, dict):
        return _bad(line_number, None, "invalid_json", f"line {line_number} is not a JSON object")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _bad(line_number, None, "missing_custom_id", f"line {line_number}: custom_id must be a non-empty string")
    if custom_id in seen_ids:
        return _bad(line_number, custom_id, "duplicate_custom_id",
                    f"line {line_number}: custom_id {custom_id!r} is used by an earlier line")
    seen_ids.add(custom_id)
    method, url, body = item.get("method", "POST"), item.get("url"), item.get("body")
    if method != "POST":
        return _bad(line_number, custom_id, "invalid_method", f"method must be POST, got {method!r}")
    if url not in BATCH_URLS:
        return _bad(line_number, custom_id, "invalid_url", f"url must be one of {', '.join(BATCH_URLS)}, got {url!r}")
    if endpoint is not None and url != endpoint:
        return _bad(line_number, custom_id, "mismatched_url", f"url {url!r} is not this batch's endpoint {endpoint!r}")
    if not isinstance(body, dict):
        return _bad(line_number, custom_id, "invalid_body", "body must be a JSON object")
    if body.get("stream"):
        return _bad(line_number, custom_id, "invalid_body", "body.stream: a batch request cannot stream")
    return BatchLine(line_number, custom_id, url, body)


def _bad(line_number: int, custom_id: str | None, code: str, message: str) -> BatchLine:
    return BatchLine(line_number, custom_id, None, None, code, message)


def read_lines(path: Path, endpoint: str | None = None) -> Iterator[BatchLine]:
    """Every non-blank line of a Batch API input file, parsed (a bad one carries its error)."""
    seen_ids: set[str] = set()
    with path.open("r", encoding="utf-8", errors="surrogateescape") as file:
        for number, text in enumerate(file, 1):
            if text.strip():
                yield parse_line(text, number, seen_ids, endpoint)


def response_line(line: BatchLine, status_code: int, body) -> dict:
    return {"id": _new_id("batch_req"), "custom_id": line.custom_id,
            "response": {"status_code": status_code, "request_id": _new_id("req"), "body": body}, "error": None}


def error_line(line: BatchLine) -> dict:
    return {"id": _new_id("batch_req"), "custom_id": line.custom_id, "response": None,
            "error": {"code": line.error_code, "message": line.error_message}, "line": line.line_number}


def is_success(output: dict) -> bool:
    """A line whose request ran and was answered 2xx."""
    response = output.get("response")
    return output.get("error") is None and response is not None and 200 <= response["status_code"] < 300


def keys_written(path: Path) -> set[str]:
    """The keys of the lines an earlier run wrote to `path`. A last line cut off by a kill is removed
    (its request runs again)."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as file:
            file.truncate(len(complete))
    keys = set()
    for number, raw in enumerate(complete.splitlines(), 1):
        if raw.strip():
            try:
                output = json.loads(raw)
                keys.add(line_key(output.get("custom_id"), output.get("line")))
            except (ValueError, AttributeError):
                raise ValueError(f"{path} line {number} is not a batch output line: is it the right OUTPUT?") from None
    return keys


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"
