"""The Ray Serve application: an ingress deployment with polyhead's FastAPI app, and one engine
replica deployment per backbone, routed by polyhead's router.

What each `polyhead serve` flag becomes in Ray Serve is in docs/scale-out.md. In short: --replicas
and --autoscale set the replica deployment's num_replicas / autoscaling_config (on ongoing requests
per replica), --threads its engine's torch threads and its actor's CPUs, --max-queued-requests stays
the ingress's own admission (one queue budget for the whole fleet, answered with 429 and
Retry-After), --shutdown-grace the replicas' graceful_shutdown_timeout_s (a replica scaled down or
stopped first finishes what it holds).
"""

from dataclasses import dataclass

from ray import serve
from ray.serve.config import AutoscalingConfig, RequestRouterConfig

from polyhead.deploy.replica import ROUTING_STATS_PERIOD_S, EngineReplica
from polyhead.deploy.replica_pool import ReplicaPool
from polyhead.server.app import ServerSettings
from polyhead.server.app import build_app as build_server_app
from polyhead.server.backbones import BackbonePlan

INGRESS_MAX_ONGOING = 4096  # the ingress's own admission (max_queued_requests) turns requests away, not Ray's


@dataclass
class ScaleOut:
    """How many replicas of each backbone, and what each gets."""

    replicas: int = 1  # per backbone (fixed when autoscale is None)
    autoscale: tuple[int, int] | None = None  # (min, max) replicas; scale on ongoing requests per replica
    target_ongoing_requests: float = 16.0  # autoscaling: what one replica is sized for
    downscale_delay_s: float = 30.0  # autoscaling: how long the load must stay low before a replica goes
    num_cpus: float = 1.0  # Ray CPUs reserved per replica (its engine's threads)
    num_gpus: float = 0.0
    max_ongoing_requests: int = 64  # per replica; beyond it Ray holds requests at the router
    graceful_shutdown_timeout_s: float = 30.0  # a draining replica's in-flight requests may take this long
    routing: str = "polyhead"  # polyhead | pow2
    imbalance_threshold: int = 16  # requests; beyond this load gap the router falls back to power-of-two

    @staticmethod
    def parse_autoscale(text: str) -> tuple[int, int]:
        low, sep, high = text.partition(":")
        if not sep or not low.isdigit() or not high.isdigit() or not 1 <= int(low) <= int(high):
            raise ValueError(f"--autoscale takes MIN:MAX replicas with 1 <= MIN <= MAX (e.g. 1:8), got {text!r}")
        return int(low), int(high)


@serve.ingress()
class Ingress:
    """The single-machine FastAPI app, whose engines are ReplicaPools (one code path, not a copy)."""

    async def __init__(self, plan: BackbonePlan, settings: ServerSettings, replicas: dict):
        pools = {name: await ReplicaPool(handle, name).connect() for name, handle in replicas.items()}
        self.registry = plan.build_registry(make_engine=pools.__getitem__)
        self.settings = settings

    def __serve_build_asgi_app__(self):
        default = self.registry.backbones[self.registry.default_backbone].engine
        self.server_app = build_server_app(default, self.settings, self.registry)
        return self.server_app

    def drain(self) -> int:
        """Turn new requests away (503 shutting_down, as one machine does after SIGTERM); returns the
        number still in flight, which keep going."""
        self.server_app.state.server.draining = True
        return self.in_flight()

    def in_flight(self) -> int:
        return sum(engine.num_in_flight for engine in self.registry.engines)


def replica_deployment(plan: BackbonePlan, backbone: str, scale: ScaleOut):
    options = {
        "name": f"engine-{_deployment_name(backbone)}", "max_ongoing_requests": scale.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": scale.num_cpus, "num_gpus": scale.num_gpus},
        "graceful_shutdown_timeout_s": scale.graceful_shutdown_timeout_s, "health_check_period_s": 2.0,
        "health_check_timeout_s": 30.0,
        "request_router_config": RequestRouterConfig(
            request_router_class="polyhead.deploy.ray_router:PolyheadRouter",
            request_router_kwargs={"policy": scale.routing, "imbalance_threshold": scale.imbalance_threshold},
            request_routing_stats_period_s=ROUTING_STATS_PERIOD_S, request_routing_stats_timeout_s=5.0)}
    if scale.autoscale is None:
        options["num_replicas"] = scale.replicas
    else:
        low, high = scale.autoscale
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=low, initial_replicas=max(low, min(scale.replicas, high)), max_replicas=high,
            target_ongoing_requests=scale.target_ongoing_requests, upscale_delay_s=5.0,
            downscale_delay_s=scale.downscale_delay_s, look_back_period_s=min(30.0, max(5.0, scale.downscale_delay_s)))
    return serve.deployment(EngineReplica).options(**options).bind(plan, backbone)


def build_application(plan: BackbonePlan, settings: ServerSettings, scale: ScaleOut):
    """The whole application, ready for serve.run."""
    replicas = {name: replica_deployment(plan, name, scale) for name in plan.backbone_names()}
    ingress = serve.deployment(Ingress).options(name="polyhead-ingress", max_ongoing_requests=INGRESS_MAX_ONGOING,
                                                ray_actor_options={"num_cpus": 0})
    return ingress.bind(plan, settings, replicas)


def build_app(args: dict):
    """`serve run polyhead.deploy:build_app replicas=2 tasks=default ...`: the `polyhead serve`
    flags (without dashes, `-` or `_` alike) as Ray Serve's builder arguments."""
    from polyhead.deploy.launch import plan_from_flags

    plan, settings, scale = plan_from_flags(args)
    return build_application(plan, settings, scale)


def _deployment_name(backbone: str) -> str:
    """A deployment name from a backbone name or path (Ray forbids '#' and '/' in names)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in backbone)[-60:]
