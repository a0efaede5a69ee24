"""Every error leaves the server through here, in OpenAI's shape:
{"error": {"message", "type", "param", "code"}}."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from polyhead.engine.client.engine_client import EngineDeadError
from polyhead.engine.client.supervision import EngineRestartedError

logger = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def deadline_error(timeout: float) -> APIError:
    """408: the request's deadline passed (the engine finished it with reason "timeout", or the
    server's own timer fired first while a step ran long)."""
    return APIError(408, f"request exceeded its deadline of {timeout:g} s (timeout) and was aborted",
                    "timeout", "timeout")


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    message = message.encode("utf-8", "backslashreplace").decode()  # a lone surrogate a client sent, echoed
    body = {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def error_chunk(message: str, status: int = 500, code: str | None = "engine_error") -> dict:
    """An error in the middle of a stream, where the status line has already been sent. `code`
    says what failed: engine_error (the engine failed this request), engine_dead (no engine, retry
    later), engine_restarted (the engine died twice while it ran), timeout."""
    message = message.encode("utf-8", "backslashreplace").decode()
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": None, "code": code}}


def exception_chunk(err: BaseException) -> dict:
    """The stream's error event for an exception its request's output iterator raised."""
    if isinstance(err, EngineDeadError):
        code = "engine_restarted" if isinstance(err, EngineRestartedError) else "engine_dead"
        return error_chunk(f"the engine is not running: {err}", 503, code)
    return error_chunk(f"{type(err).__name__}: {err}")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError):
        return error_response(err.status, err.message, err.param, err.code, err.headers)

    @app.exception_handler(EngineDeadError)
    async def _engine_dead(_: Request, err: EngineDeadError):
        code = "engine_restarted" if isinstance(err, EngineRestartedError) else "engine_dead"
        return error_response(503, f"the engine is not running: {err}", None, code, {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # its loc is ("body", character position)
            where = first["loc"][-1] if len(first.get("loc", ())) > 1 else "?"
            reason = first.get("ctx", {}).get("error", "invalid JSON")
            return error_response(400, f"the request body is not valid JSON: {reason} at character {where}",
                                  None, "invalid_json")
        # ("body", "logit_bias", "abc", "[key]") -> logit_bias.abc: the bad key itself is named
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "[key]")]
        param = ".".join(location) or None
        message = f"{param}: {first['msg']}" if param else first["msg"]
        return error_response(400, message, param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException):
        return error_response(err.status_code, str(err.detail), headers=err.headers)  # 405 keeps its Allow

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception):  # a bug, still answered in OpenAI's shape
        logger.exception("unhandled error in a request handler", exc_info=err)
        return error_response(500, f"internal server error: {type(err).__name__}", None, "internal_error")
