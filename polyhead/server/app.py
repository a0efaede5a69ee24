"""The OpenAI-compatible HTTP app around one engine client (thread or process mode)."""

import hmac
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from polyhead.engine.engine_client import EngineClient
from polyhead.server.completions import router as completions_router
from polyhead.server.errors import APIError, error_response, install_error_handlers
from polyhead.server.metrics import Metrics
from polyhead.server.protocol import ModelCard, ModelList

HEALTH_STALE_AFTER_S = 60.0  # the loop checks in at least every 0.5 s when idle; a step longer than this is stuck


@dataclass
class ServerSettings:
    model_names: list[str]  # names clients may send as `model`; the first is listed first
    api_key: str | None = None  # when set, every /v1 request needs `Authorization: Bearer <key>`
    default_max_tokens: int = 256  # when a request names no max_tokens
    max_queued_requests: int = 256  # requests waiting for their first token; beyond: 429
    max_queued_tokens: int = 262_144  # their prompt tokens; beyond: 429
    request_timeout_s: float = 600.0  # deadline per request (a request's `timeout` may only lower it)
    max_request_bytes: int = 1 << 20  # request bodies beyond this: 413
    public_paths: set[str] = field(default_factory=lambda: {"/health", "/metrics"})


class ServerState:
    """What the endpoints share: the engine and the settings, plus the checks they all make."""

    def __init__(self, engine: EngineClient, settings: ServerSettings):
        self.engine = engine
        self.settings = settings
        self.default_max_tokens = settings.default_max_tokens
        self.metrics = Metrics(engine)
        self.draining = False  # set on shutdown: new requests get 503 while in-flight ones finish

    @property
    def tokenizer(self):
        return self.engine.tokenizer  # a process-mode engine has it once started

    def admit(self, num_requests: int, num_prompt_tokens: int) -> None:
        limits = self.settings
        if self.engine.num_queued + num_requests > limits.max_queued_requests:
            self._reject("queue_full", f"{self.engine.num_queued} requests are waiting "
                         f"(max_queued_requests {limits.max_queued_requests}); retry shortly")
        if self.engine.num_queued_tokens + num_requests * num_prompt_tokens > limits.max_queued_tokens:
            self._reject("queue_tokens_full", f"{self.engine.num_queued_tokens} prompt tokens are waiting "
                         f"(max_queued_tokens {limits.max_queued_tokens}); retry shortly")

    def _reject(self, reason: str, message: str) -> None:
        self.metrics.rejected.labels(reason=reason).inc()
        raise APIError(429, message, None, reason, headers={"Retry-After": "1"})

    def timeout_for(self, requested: float | None) -> float:
        limit = self.settings.request_timeout_s
        return limit if requested is None else min(requested, limit)

    def check_model(self, name: str) -> None:
        if name not in self.settings.model_names:
            raise APIError(404, f"model {name!r} does not exist; available: {', '.join(self.settings.model_names)}",
                           "model", "model_not_found")

    def apply_chat_template(self, messages: list[dict]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this model has no chat template; use /v1/completions")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def build_app(engine: EngineClient, settings: ServerSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if not engine.is_running:
            engine.start()
        yield
        engine.stop()

    app = FastAPI(title="polyhead", lifespan=lifespan)
    app.state.server = ServerState(engine, settings)
    install_error_handlers(app)

    @app.middleware("http")
    async def limits_and_draining(request: Request, call_next):
        server = app.state.server
        if server.draining and request.url.path.startswith("/v1"):
            server.metrics.rejected.labels(reason="shutting_down").inc()
            return error_response(503, "the server is shutting down; retry on another replica", None,
                                  "shutting_down")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_request_bytes:
            server.metrics.rejected.labels(reason="too_large").inc()
            return error_response(413, f"request body is {length} bytes; the limit is {settings.max_request_bytes} "
                                  "(max_request_bytes)", None, "request_too_large")
        return await call_next(request)

    @app.middleware("http")
    async def require_api_key(request: Request, call_next):
        if settings.api_key and request.url.path not in settings.public_paths:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                return error_response(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                      None, "invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    async def health():
        age = engine.seconds_since_last_step()
        if not engine.is_running or age > HEALTH_STALE_AFTER_S:
            reason = engine.dead_reason or f"the engine loop has not checked in for {age:.0f} s"
            return JSONResponse({"status": "unhealthy", "reason": reason}, status_code=503)
        return {"status": "ok", "requests_in_flight": engine.num_in_flight}

    @app.get("/metrics")
    async def metrics():
        return Response(app.state.server.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models():
        return ModelList(data=[ModelCard(id=name) for name in settings.model_names]).model_dump()

    app.include_router(completions_router)
    return app
