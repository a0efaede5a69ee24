"""polyhead on Ray Serve: many replicas of each backbone's engine behind one OpenAI and task API.

`polyhead serve --replicas N` (or `serve run polyhead.deploy:build_app` with a config file) runs
the same FastAPI app as a single machine inside an ingress deployment; its engines are
`ReplicaPool`s that send each request to one replica of that backbone's deployment, chosen by
polyhead's cache- and adapter-aware router (routing.py, ray_router.py). docs/scale-out.md.

Importing this package does not import Ray: `build_app` loads it when called.
"""


def build_app(args: dict):
    """Ray Serve's application builder (`serve run polyhead.deploy:build_app key=value ...`)."""
    from polyhead.deploy.application import build_app as build

    return build(args)
