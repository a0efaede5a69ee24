"""The `polyhead serve` flags that put it on Ray Serve (no Ray import: `--help` stays fast)."""

import argparse


def add_scale_out_args(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("scale-out on Ray Serve", "any of these serves through Ray Serve: the same API, "
                                 "each backbone's engine in N replicas behind polyhead's router (docs/scale-out.md)")
    group.add_argument("--replicas", type=int, default=None, metavar="N",
                       help="replicas of each backbone's engine; a local Ray is started unless --ray-address")
    group.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="join a running Ray cluster (`auto` after `ray start --head`) instead of a local one")
    group.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                       help="let Ray Serve scale each backbone between MIN and MAX replicas on ongoing requests "
                       "(a replica scaled down finishes its requests first)")
    group.add_argument("--target-ongoing-requests", type=float, default=16.0,
                       help="autoscaling: ongoing requests one replica is sized for (default: 16)")
    group.add_argument("--downscale-delay", type=float, default=30.0,
                       help="autoscaling: seconds the load must stay low before a replica is removed (default: 30)")
    group.add_argument("--replica-cpus", type=float, default=None,
                       help="Ray CPUs reserved per replica (default: --threads)")
    group.add_argument("--replica-gpus", type=float, default=0.0, help="Ray GPUs per replica (default: 0)")
    group.add_argument("--max-ongoing-per-replica", type=int, default=64,
                       help="requests one replica holds before Ray queues more at the router (default: 64)")
    group.add_argument("--routing", default="polyhead", choices=["polyhead", "pow2"],
                       help="polyhead: by cached prefix, resident adapter and load; pow2: Ray's power of two "
                       "choices on load alone (default: polyhead)")


def wants_ray(args) -> bool:
    return args.replicas is not None or args.ray_address is not None or args.autoscale is not None


def scale_from_args(args):
    from polyhead.deploy.application import ScaleOut

    if args.replicas is not None and args.replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {args.replicas}")
    threads = args.threads or 1
    return ScaleOut(replicas=args.replicas or 1,
                    autoscale=ScaleOut.parse_autoscale(args.autoscale) if args.autoscale else None,
                    target_ongoing_requests=args.target_ongoing_requests, downscale_delay_s=args.downscale_delay,
                    num_cpus=args.replica_cpus if args.replica_cpus is not None else threads,
                    num_gpus=args.replica_gpus, max_ongoing_requests=args.max_ongoing_per_replica,
                    graceful_shutdown_timeout_s=args.shutdown_grace, routing=args.routing)
