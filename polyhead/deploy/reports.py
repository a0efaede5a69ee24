"""What each replica last reported, per deployment: kept by the router (ray_router.py), read by the
ingress's ReplicaPool for /health, stats and per-replica /metrics.

Its own module on purpose: Ray Serve ships the router class to the handle's process by value, so a
dict defined beside it would be a private copy; this module is imported by reference in both.
"""

from dataclasses import dataclass

from polyhead.engine.core.outputs import EngineStats


@dataclass(slots=True)
class ReplicaReport:
    stats: EngineStats
    num_in_flight: int  # requests it holds, queued or running
    num_queued: int  # requests it holds that have produced nothing yet
    num_queued_tokens: int
    num_restarts: int  # times its engine was restarted in place (supervision)
    resident_adapters: list[str]
    pid: int
    received_at: float  # time.monotonic() when the router saw it


REPORTS: dict[str, dict[str, ReplicaReport]] = {}  # deployment name -> replica id -> its latest report


def reports_for(deployment: str) -> dict[str, ReplicaReport]:
    return dict(REPORTS.get(deployment, {}))
