"""Limits at the door, before a request reaches an endpoint: the body's size and read time, and the
time a connection may take to send its request line and headers (slowloris).

The rule they keep: no client holds a connection, or memory, for longer or more than the flags say,
whatever framing it uses. The body is counted as it arrives (a chunked body has no Content-Length
to trust) and read in full before the app sees it, under one deadline; the headers are timed by the
HTTP protocol itself, since the app is not called until they are complete.
"""

import asyncio
import functools
from collections.abc import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from polyhead.server.errors import error_response

CLOSE = {"Connection": "close"}  # the rest of the body is not read, so the connection cannot be reused


class BodyLimit:
    """ASGI middleware: 413 once a body passes `max_bytes` (by Content-Length, or counted while it is
    read), 408 when it has not arrived within `timeout_s`; `on_reject(reason)` counts each. A path in
    `limits_by_path` (e.g. file uploads) has its own limit: path -> (bytes, the setting that names it)."""

    def __init__(self, app, max_bytes: int, timeout_s: float, on_reject: Callable[[str], None],
                 limits_by_path: dict[str, tuple[int, str]] | None = None):
        self.app, self.max_bytes, self.timeout_s, self.on_reject = app, max_bytes, timeout_s, on_reject
        self.limits_by_path = limits_by_path or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        default = (self.max_bytes, "max_request_bytes, --max-request-bytes")
        max_bytes, setting = self.limits_by_path.get(scope["path"], default)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > max_bytes:
            return await self._reject(scope, receive, send, 413, f"request body is {int(length)} bytes; the limit "
                                      f"is {max_bytes} ({setting})")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    size += len(message.get("body", b""))
                    if size > max_bytes:
                        return await self._reject(scope, receive, send, 413, f"request body passed {size} bytes; "
                                                  f"the limit is {max_bytes} ({setting})")
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return await self._reject(scope, receive, send, 408, "")
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay():
            nonlocal body
            if body is None:
                return await receive()  # after the body: the disconnect a streaming response listens for
            message, body = body, None
            return message

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send, status: int, what: str) -> None:
        if status == 413:
            self.on_reject("too_large")
            response = error_response(413, what, None, "request_too_large", CLOSE)
        else:
            self.on_reject("body_timeout")
            response = error_response(408, f"the request body did not arrive within {self.timeout_s:g} s "
                                      "(--body-read-timeout)", None, "body_timeout", CLOSE)
        await response(scope, receive, send)


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request line and headers have not all arrived
    `header_timeout_s` after it opened, or after the first byte of a later request on it (an idle
    keep-alive connection is uvicorn's --timeout-keep-alive's to close).

    It also keeps uvicorn's --limit-concurrency (open connections or running requests beyond it get
    503), but answers in OpenAI's error shape with Retry-After, where uvicorn sends plain text."""

    header_timeout_s = 10.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_concurrency, self.limit_concurrency = self.limit_concurrency, None  # checked in _limited
        self.app = functools.partial(self._limited, self.app)

    async def _limited(self, app, scope, receive, send) -> None:
        limit = self.max_concurrency
        # uvicorn's own test, made once this request's task exists (it counts itself in self.tasks)
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) - 1 >= limit):
            response = error_response(503, f"{len(self.connections)} connections are open and "
                                      f"{len(self.tasks) - 1} requests are running (limit_concurrency {limit}, "
                                      "--limit-concurrency); retry shortly", None, "too_many_connections",
                                      {"Retry-After": "1", **CLOSE})
            return await response(scope, receive, send)
        return await app(scope, receive, send)

    @classmethod
    def with_timeout(cls, header_timeout_s: float) -> type["HeaderTimeoutProtocol"]:
        return type(cls.__name__, (cls,), {"header_timeout_s": header_timeout_s})

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in: the body has BodyLimit's deadline
            self._cancel_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection whose headers took over %g s (--header-read-timeout)",
                             self.header_timeout_s)
            self.transport.close()
