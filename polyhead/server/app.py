"""The OpenAI-compatible HTTP app around one AsyncEngine."""

import hmac
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from polyhead.engine.async_engine import AsyncEngine
from polyhead.server.completions import router as completions_router
from polyhead.server.errors import APIError, error_response, install_error_handlers
from polyhead.server.protocol import ModelCard, ModelList

HEALTH_STALE_AFTER_S = 60.0  # the loop checks in at least every 0.5 s when idle; a step longer than this is stuck


@dataclass
class ServerSettings:
    model_names: list[str]  # names clients may send as `model`; the first is listed first
    api_key: str | None = None  # when set, every /v1 request needs `Authorization: Bearer <key>`
    default_max_tokens: int = 256  # when a request names no max_tokens
    public_paths: set[str] = field(default_factory=lambda: {"/health", "/metrics"})


class ServerState:
    """What the endpoints share: the engine and the settings, plus the checks they all make."""

    def __init__(self, engine: AsyncEngine, settings: ServerSettings):
        self.engine = engine
        self.settings = settings
        self.default_max_tokens = settings.default_max_tokens
        self.tokenizer = engine.engine.tokenizer

    def check_model(self, name: str) -> None:
        if name not in self.settings.model_names:
            raise APIError(404, f"model {name!r} does not exist; available: {', '.join(self.settings.model_names)}",
                           "model", "model_not_found")

    def apply_chat_template(self, messages: list[dict]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this model has no chat template; use /v1/completions")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def build_app(engine: AsyncEngine, settings: ServerSettings) -> FastAPI:
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

    @app.get("/v1/models")
    async def list_models():
        return ModelList(data=[ModelCard(id=name) for name in settings.model_names]).model_dump()

    app.include_router(completions_router)
    return app
