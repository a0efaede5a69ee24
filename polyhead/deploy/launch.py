"""`polyhead serve --replicas N` / `--ray-address ADDR` / `--autoscale MIN:MAX`: the same server on Ray Serve.

It connects to (or starts) Ray, starts Serve's HTTP proxy on --host/--port, deploys the application
(application.py), prints where it listens, and on SIGTERM or Ctrl-C shuts Serve down gracefully:
the proxy stops taking connections, the ingress and every replica finish what they hold (for
--shutdown-grace at most), then the replicas' engines stop.
"""

import os
import signal
import sys
import threading
import time

from polyhead.server.app import ServerSettings
from polyhead.server.backbones import BackbonePlan


def serve_on_ray(args, settings: ServerSettings) -> int:
    import ray
    from ray import serve

    from polyhead.deploy.application import build_application

    plan, scale = plan_and_scale(args, settings)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray's usage report would phone home
    if args.ray_address:
        ray.init(address=args.ray_address, logging_level="warning")
    else:
        # A local Ray gets this machine's cores, or as many as the replicas reserve: on a laptop
        # two backbones x two replicas share two cores rather than waiting forever to be placed.
        most_replicas = scale.autoscale[1] if scale.autoscale else scale.replicas
        needed = scale.num_cpus * most_replicas * len(plan.backbone_names())
        cpus = os.cpu_count() or 1
        if needed > cpus:
            print(f"polyhead: the replicas reserve {needed:g} CPUs (--replica-cpus {scale.num_cpus:g} each) on "
                  f"{cpus} cores: they will share them", file=sys.stderr, flush=True)
        ray.init(num_cpus=max(cpus, needed), include_dashboard=False, logging_level="warning")
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_application(plan, settings, scale), name="polyhead", route_prefix="/")
    print(f"polyhead: serving on http://{args.host}:{args.port} through Ray Serve "
          f"({_replicas_text(scale)} of {', '.join(plan.backbone_names())}; routing: {scale.routing})",
          file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    drain(serve.get_app_handle("polyhead"), args.shutdown_grace)
    serve.shutdown()
    ray.shutdown()
    return 0


def drain(ingress, grace_s: float) -> None:
    """New requests get 503 while those in flight finish, for grace_s at most."""
    in_flight = ingress.drain.remote().result()
    print(f"polyhead: shutting down: {in_flight} requests in flight finish first", file=sys.stderr, flush=True)
    deadline = time.monotonic() + grace_s
    while in_flight and time.monotonic() < deadline:
        time.sleep(0.2)
        in_flight = ingress.in_flight.remote().result()


def plan_and_scale(args, settings: ServerSettings):
    from polyhead.cli import engine_config
    from polyhead.deploy.flags import scale_from_args

    if args.threads is None:  # replicas share this machine's cores unless told otherwise
        args.threads = max(1, (os.cpu_count() or 1) // (args.replicas or 1))
    plan = BackbonePlan.from_args(args, engine_config(args), settings.model_names[0])
    return plan, scale_from_args(args)


def plan_from_flags(flags: dict):
    """Ray Serve's builder arguments (`serve run polyhead.deploy:build_app replicas=2`) read as the
    `polyhead serve` flags: (BackbonePlan, ServerSettings, ScaleOut)."""
    from polyhead.cli import build_parser, server_settings

    argv = ["serve"]
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if value is True or value == "true":
            argv.append(flag)
        elif value is not False and value != "false":
            argv += [flag, str(value)]
    args = build_parser().parse_args(argv)
    settings = server_settings(args)
    plan, scale = plan_and_scale(args, settings)
    return plan, settings, scale


def _replicas_text(scale) -> str:
    if scale.autoscale:
        return f"{scale.autoscale[0]}-{scale.autoscale[1]} replicas"
    return f"{scale.replicas} replica{'s' if scale.replicas != 1 else ''}"
