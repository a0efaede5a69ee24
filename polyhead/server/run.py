"""Run the app under uvicorn with the door's limits and a graceful shutdown."""

import asyncio
from dataclasses import dataclass

import uvicorn

from polyhead.engine.client.engine_client import EngineClient
from polyhead.server.app import ServerSettings, build_app
from polyhead.server.door import HeaderTimeoutProtocol


@dataclass
class ConnectionSettings:
    grace_s: float = 30.0  # after SIGTERM, how long in-flight requests may take to finish
    header_timeout_s: float = 10.0  # request line and headers not all in by then: the connection is closed
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive)
    limit_concurrency: int | None = None  # connections or requests beyond this get 503 (door.py); None: no limit


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: the socket stays open and new requests get 503 (the app's `draining`) while
    the requests in flight at the signal finish, for the grace period at most; then uvicorn closes the
    socket and cancels whatever is left (which aborts it in the engine)."""

    def __init__(self, config: uvicorn.Config, state):
        super().__init__(config)
        self.state = state
        self.in_flight_at_signal: set[asyncio.Task] = set()

    def handle_exit(self, sig, frame):
        if not self.state.draining:
            self.in_flight_at_signal = set(self.server_state.tasks)
        self.state.draining = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets=None):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_graceful_shutdown
        while (not self.force_exit and loop.time() < deadline
               and any(not task.done() for task in self.in_flight_at_signal)):
            await asyncio.sleep(0.05)
        self.config.timeout_graceful_shutdown = max(0.0, deadline - loop.time())
        await super().shutdown(sockets)


def serve(engine: EngineClient, settings: ServerSettings, host: str, port: int,
          connections: ConnectionSettings | None = None, registry=None, root_path: str = "") -> None:
    """root_path: the prefix a reverse proxy serves the app under and strips (--root-path)."""
    connections = connections or ConnectionSettings()
    app = build_app(engine, settings, registry)
    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            http=HeaderTimeoutProtocol.with_timeout(connections.header_timeout_s),
                            timeout_graceful_shutdown=connections.grace_s, timeout_keep_alive=connections.keep_alive_s,
                            limit_concurrency=connections.limit_concurrency, root_path=root_path)
    DrainingServer(config, app.state.server).run()
