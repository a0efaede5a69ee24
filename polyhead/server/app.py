"""The OpenAI-compatible HTTP app around one engine per backbone (one backbone without a manifest)."""

import hmac
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from polyhead.engine.client.engine_client import EngineClient
from polyhead.models.generation_config import read_generation_defaults
from polyhead.server.batches import BatchManager
from polyhead.server.batches import router as batches_router
from polyhead.server.classify import router as classify_router
from polyhead.server.completions import router as completions_router
from polyhead.server.door import BodyLimit
from polyhead.server.embeddings import router as embeddings_router
from polyhead.server.errors import APIError, error_response, install_error_handlers
from polyhead.server.files import router as files_router
from polyhead.server.live_stats import router as stats_router
from polyhead.server.metrics import Metrics
from polyhead.server.playground import PUBLIC_PREFIX, install_playground
from polyhead.server.protocol import ModelCard, ModelList
from polyhead.server.registry import TaskRegistry
from polyhead.server.score import router as score_router
from polyhead.server.state_dir import StateDir
from polyhead.server.tag import router as tag_router
from polyhead.server.tasks import TaskRouting
from polyhead.server.tasks import router as tasks_router
from polyhead.server.tokenize import router as tokenize_router

HEALTH_STALE_AFTER_S = 60.0  # the loop checks in at least every 0.5 s when idle; a step longer than this is stuck


@dataclass
class ServerSettings:
    model_names: list[str]  # names clients may send as `model`; the first is listed first
    lora_names: list[str] = field(default_factory=list)  # --lora-modules adapters, requestable as `model`
    api_key: str | None = None  # when set, every /v1 request needs `Authorization: Bearer <key>`
    default_max_tokens: int = 256  # when a request names no max_tokens
    max_queued_requests: int = 256  # requests waiting for their first token; beyond: 429
    max_queued_tokens: int = 262_144  # their prompt tokens; beyond: 429
    request_timeout_s: float = 600.0  # deadline per request (a request's `timeout` may only lower it)
    max_request_bytes: int = 1 << 20  # request bodies beyond this, counted as they arrive: 413
    body_read_timeout_s: float = 30.0  # a body not all in by then: 408 (polyhead/server/door.py)
    max_inputs_per_request: int = 64  # inputs in one classify/tag/embeddings request; beyond: 413
    generation_config: str = "auto"  # auto: a model folder's generation_config.json fills unset sampling fields
    max_documents_per_request: int = 128  # documents in one score/rerank request; beyond: 413
    state_dir: str | None = None  # uploaded files and batch jobs (kept across restarts); None: a temporary one
    max_file_bytes: int = 200 << 20  # an upload to /v1/files beyond this: 413
    max_batch_concurrency: int = 64  # lines of one batch job in flight at once (they queue like any request)
    public_paths: set[str] = field(default_factory=lambda: {"/health", "/metrics", "/stats", "/"})
    web: bool = True  # serve the playground at GET / (off: --no-web)


class ServerState(TaskRouting):
    """What the endpoints share: the backbones' engines, the tasks and the settings, plus the checks
    they all make (task routing lives in TaskRouting, polyhead/server/tasks.py)."""

    def __init__(self, registry: TaskRegistry, settings: ServerSettings):
        self.registry = registry
        self.settings = settings
        default = registry.backbones[registry.default_backbone]
        self.engine = default.engine  # the default backbone's: plain completions and chat run here
        self.default_max_tokens = settings.default_max_tokens
        self.tokenizer = default.tokenizer
        self.metrics = Metrics(registry)
        # per generative backbone: the sampling its generation_config.json recommends (models/generation_config.py)
        self.generation_defaults = {b.name: read_generation_defaults(b.engine.info.folder, settings.generation_config)
                                    for b in registry.backbones.values() if b.is_generative}
        self.draining = False  # set on shutdown: new requests get 503 while in-flight ones finish

    def admit(self, num_requests: int, num_prompt_tokens: int) -> None:
        """n requests of num_prompt_tokens each; 429 when the queue is full."""
        self.admit_total(num_requests, num_requests * num_prompt_tokens)

    def admit_total(self, num_requests: int, num_prompt_tokens: int) -> None:
        """Queue limits span every backbone: one server, one queue budget."""
        limits = self.settings
        num_queued = sum(engine.num_queued for engine in self.registry.engines)
        num_queued_tokens = sum(engine.num_queued_tokens for engine in self.registry.engines)
        if num_queued + num_requests > limits.max_queued_requests:
            self._reject("queue_full", f"{num_queued} requests are waiting "
                         f"(max_queued_requests {limits.max_queued_requests}); retry shortly")
        if num_queued_tokens + num_prompt_tokens > limits.max_queued_tokens:
            self._reject("queue_tokens_full", f"{num_queued_tokens} prompt tokens are waiting "
                         f"(max_queued_tokens {limits.max_queued_tokens}); retry shortly")

    def _reject(self, reason: str, message: str) -> None:
        self.metrics.rejected.labels(reason=reason).inc()
        raise APIError(429, message, None, reason, headers={"Retry-After": "1"})

    def timeout_for(self, requested: float | None) -> float:
        limit = self.settings.request_timeout_s
        return limit if requested is None else min(requested, limit)


def build_app(engine: EngineClient, settings: ServerSettings, registry: TaskRegistry | None = None) -> FastAPI:
    """`engine` serves `settings.model_names`; `registry` adds the tasks and any other backbones
    (built by TaskRegistry.from_specs with `engine` as the default backbone's)."""
    registry = registry or TaskRegistry.single(engine, settings.model_names[0])

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        for backbone_engine in registry.engines:
            if not backbone_engine.is_running:
                backbone_engine.start()
        app.state.batches.start()
        yield
        await app.state.batches.stop()
        registry.stop()

    app = FastAPI(title="polyhead", lifespan=lifespan)
    app.state.server = ServerState(registry, settings)
    app.state.batches = BatchManager(app, StateDir(settings.state_dir), settings.max_batch_concurrency,
                                     settings.api_key)
    install_error_handlers(app)

    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, timeout_s=settings.body_read_timeout_s,
                       on_reject=lambda reason: app.state.server.metrics.rejected.labels(reason=reason).inc(),
                       limits_by_path={"/v1/files": (settings.max_file_bytes, "max_file_bytes, --max-file-bytes")})

    @app.middleware("http")
    async def draining(request: Request, call_next):
        server = app.state.server
        path = route_path(request)
        if server.draining and (path.startswith("/v1") or path == "/health"):
            server.metrics.rejected.labels(reason="shutting_down").inc()
            return error_response(503, "the server is shutting down; retry on another replica", None,
                                  "shutting_down", {"Retry-After": "1", "Connection": "close"})
        return await call_next(request)

    @app.middleware("http")
    async def require_api_key(request: Request, call_next):
        path = route_path(request)
        is_public = path in settings.public_paths or (settings.web and path.startswith(PUBLIC_PREFIX))
        if settings.api_key and not is_public:
            scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
            given = given.strip() if scheme.lower() == "bearer" else ""  # the scheme is case-insensitive (RFC 7235)
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                return error_response(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                      None, "invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    async def health():
        for name, backbone in registry.backbones.items():
            loop, age = backbone.engine, backbone.engine.seconds_since_last_step()
            if loop.is_restarting:
                return JSONResponse({"status": "restarting", "backbone": name, "reason": "the engine died and is "
                                     "being restarted; requests wait for it"}, status_code=503)
            if not loop.is_running or age > HEALTH_STALE_AFTER_S:
                reason = loop.dead_reason or f"the engine loop has not checked in for {age:.0f} s"
                return JSONResponse({"status": "unhealthy", "backbone": name, "reason": reason}, status_code=503)
        return {"status": "ok", "requests_in_flight": sum(e.num_in_flight for e in registry.engines)}

    @app.get("/metrics")
    async def metrics():
        return Response(app.state.server.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models():
        state = app.state.server
        base = state.settings.model_names[0]
        # an adapter's card names the model it runs on, as vLLM lists LoRA modules
        return ModelList(data=[ModelCard(id=name, parent=base if name in state.settings.lora_names else None,
                                         sampling_defaults=state.sampling_defaults_for(name))
                               for name in state.model_ids()]).model_dump()

    for router in (completions_router, classify_router, tag_router, embeddings_router, tasks_router,
                   tokenize_router, score_router, files_router, batches_router, stats_router):
        app.include_router(router)
    if settings.web:
        install_playground(app)
    return app


def route_path(request: Request) -> str:
    """The path the routes match, without the --root-path prefix (uvicorn puts it in front of the
    path, and a mounted app sees its mount point there too)."""
    path, root = request.url.path, request.scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path
