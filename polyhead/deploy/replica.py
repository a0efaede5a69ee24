"""One Ray Serve replica of a backbone: it owns that backbone's engine and the tasks that run on it.

The engine is built from the same BackbonePlan a single-machine server uses, in the same mode
(--engine-mode auto: a decoder steps in a child process of the replica, so Ray's streaming on the
replica's event loop never takes turns on one GIL with the step loop; an encoder on a thread), with
the same task heads and adapters registered. Requests arrive
tokenized and checked (PreparedRequest, from the ingress's ReplicaPool) and their outputs leave as
deltas (OutputDelta), as they cross from a child engine process. Every routing-stats period Ray
asks the replica what polyhead's router scores it by: its cached KV block hashes, resident
adapters and load (`record_routing_stats`).
"""

import asyncio
import dataclasses
import logging
import os

from polyhead.engine.client.messages import OutputDelta
from polyhead.engine.core.request import PreparedRequest
from polyhead.server.backbones import BackbonePlan
from polyhead.server.registry import TaskRegistry

logger = logging.getLogger(__name__)
ROUTING_STATS_PERIOD_S = 1.0  # how often Ray asks a replica what it caches (Ray's default: 10 s)
STREAM_INTERVAL_S = 0.05  # a stream's deltas within this go as one message (Ray Serve LLM: 50 ms)


@dataclasses.dataclass
class ReplicaDescription:
    """What the ingress needs to check and route requests for this backbone (the same for every replica)."""

    info: object  # BackboneInfo
    rules: object  # RequestRules (RequestLimits or EncoderLimits)
    adapters: list[str]  # adapter names registered (the config's and the tasks')


class EngineReplica:
    """A deployment class: application.py sets its Ray Serve options (replicas, CPUs, routing)."""

    def __init__(self, plan: BackbonePlan, backbone: str):
        self.backbone = backbone
        self._num_reports = 0  # routing-stats reports made (the router merges each once)
        self.engine = plan.start_engine(backbone, digest_period_s=ROUTING_STATS_PERIOD_S)
        specs = [spec for spec in plan.specs() if (spec.backbone or plan.default_name) == backbone]
        self.registry = TaskRegistry.one_backbone(backbone, self.engine, specs)  # heads and adapters registered
        logger.info("replica of %s in process %d: %s", backbone, os.getpid(), self.engine.info.kv_cache_summary)

    def describe(self) -> ReplicaDescription:
        engine = self.engine
        return ReplicaDescription(engine.info, engine.rules, engine.adapter_names)

    def pid(self) -> int:
        return os.getpid()

    async def generate(self, prepared: PreparedRequest):
        """A request's outputs as deltas. Ray cancels this generator when the caller goes away,
        and leaving the `async with` aborts the request in the engine (its blocks freed next step).

        After the first (time to first token is untouched), what arrives within STREAM_INTERVAL_S
        goes as one delta: each message costs CPU in this process, the ingress and Serve's proxy
        (Ray Serve LLM batches its streams the same way, every 50 ms)."""
        async with self.engine.stream(prepared) as outputs:
            async for output in outputs:
                delta = OutputDelta.of(output)
                for later in outputs.take_ready():
                    delta = delta.then(OutputDelta.of(later))
                yield delta
                if delta.finished:
                    return
                await asyncio.sleep(STREAM_INTERVAL_S)

    def record_routing_stats(self) -> dict:
        """What polyhead's router scores this replica by (Ray calls it every routing-stats period)."""
        digest, stats = self.engine.cache_digest(), self.engine.stats()
        self._num_reports += 1
        engine = self.engine
        return {"seq": self._num_reports, "block_size": digest.block_size,
                "cached_block_hashes": digest.cached_block_hashes, "resident_adapters": digest.resident_adapters,
                "num_in_flight": engine.num_in_flight, "num_queued": engine.num_queued,
                "num_queued_tokens": engine.num_queued_tokens, "stats": dataclasses.asdict(stats),
                "num_restarts": engine.num_restarts, "pid": os.getpid()}

    def check_health(self) -> None:
        """Ray's health check: a replica whose engine is gone for good is replaced. A restarting
        engine (supervision) is still healthy: its requests wait for it."""
        if not self.engine.is_accepting:
            raise RuntimeError(f"{self.backbone}: {self.engine.dead_reason or 'the engine loop is not running'}")

    def __del__(self):
        # Ray Serve calls this after the graceful-shutdown wait, once in-flight requests finished
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()
