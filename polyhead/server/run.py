"""Run the app under uvicorn with a graceful shutdown."""

import uvicorn

from polyhead.engine.client.engine_client import EngineClient
from polyhead.server.app import ServerSettings, build_app


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: new requests get 503, in-flight ones have the grace period to finish,
    then the rest are cancelled (which aborts them in the engine)."""

    def __init__(self, config: uvicorn.Config, state):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig, frame):
        self.state.draining = True
        super().handle_exit(sig, frame)


def serve(engine: EngineClient, settings: ServerSettings, host: str, port: int, grace_s: float,
          registry=None) -> None:
    app = build_app(engine, settings, registry)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=grace_s)
    DrainingServer(config, app.state.server).run()
