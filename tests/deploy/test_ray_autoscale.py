"""`polyhead serve --autoscale 1:2` on a real local Ray: load adds a replica, idleness removes one,
and the replica removed finishes what it holds first (no request fails while it drains)."""

import threading

import httpx
import pytest

from tests.deploy.test_ray_serve import MODEL, ray_server, replicas, wait_for

pytest.importorskip("ray.serve", reason="scale-out needs ray[serve] (pip install 'polyhead[scale]')")
pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def autoscaled(tmp_path_factory):
    flags = ["--autoscale", "1:2", "--target-ongoing-requests", "2", "--downscale-delay", "5",
             "--kv-cache-memory", "64MiB"]
    with ray_server(tmp_path_factory.mktemp("autoscale"), flags, num_replicas=1) as (url, _, _):
        yield url


def test_load_adds_a_replica_and_idleness_removes_one_without_losing_a_request(autoscaled):
    url, failures, done = autoscaled, [], threading.Event()

    def keep_asking(max_tokens: int):
        with httpx.Client(timeout=120) as client:
            while not done.is_set():
                response = client.post(f"{url}/v1/completions", json={
                    "model": MODEL, "prompt": "Count slowly:", "max_tokens": max_tokens, "ignore_eos": True})
                if response.status_code != 200 or response.json()["usage"]["completion_tokens"] != max_tokens:
                    failures.append(response.text)

    load = [threading.Thread(target=keep_asking, args=(48,)) for _ in range(6)]
    for thread in load:
        thread.start()
    try:
        wait_for(lambda: len(replicas(url)) == 2, 90, "a second replica under 6 clients (target 2 each)")
    finally:
        done.set()
        for thread in load:
            thread.join(120)
    # one client asking on while the fleet shrinks: the replica removed drains before it stops
    done.clear()
    trickle = threading.Thread(target=keep_asking, args=(8,))
    trickle.start()
    try:
        wait_for(lambda: len(replicas(url)) == 1, 120, "the fleet to shrink back to one replica")
    finally:
        done.set()
        trickle.join(120)
    assert not failures, failures[:3]
