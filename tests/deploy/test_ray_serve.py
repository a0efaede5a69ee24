"""polyhead on a real local Ray cluster: `polyhead serve --replicas 2`, the default model in two
replicas of one thread each, driven with the official openai client and plain HTTP.

One fleet for the module (Ray and two model loads take ~15-40 s here); the destructive tests (a
replica killed, SIGTERM) come last, in file order.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from polyhead.bench.server_process import free_port, wait_healthy

pytest.importorskip("ray.serve", reason="scale-out needs ray[serve] (pip install 'polyhead[scale]')")
pytestmark = pytest.mark.model

MODEL = "SmolLM2-135M-Instruct"
SYSTEM = ("You are the support assistant of a bicycle shop. You answer questions about repairs, spare parts, "
          "opening hours and orders. Be brief, friendly and precise; never invent prices. ") * 4


def default_model_config():
    from transformers import AutoConfig

    from polyhead.models.config import ModelConfig
    from polyhead.models.loader import gguf_to_hf_folder
    from polyhead.models.registry import resolve_model_path

    return ModelConfig.from_hf(AutoConfig.from_pretrained(gguf_to_hf_folder(resolve_model_path(None))))


@contextlib.contextmanager
def ray_server(root: Path, flags: list[str], num_replicas: int):
    """`polyhead serve FLAGS` on a free loopback port, until healthy with num_replicas reporting;
    killed with everything Ray started (its own session) at the end. Yields (url, process, log)."""
    port, log = free_port(), root / "serve.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    command = [sys.executable, "-m", "polyhead.cli", "serve", "--port", str(port), "--threads", "1",
               "--state-dir", str(root / "state"), *flags]
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, 240, process)
        wait_for(lambda: len(replicas(url)) == num_replicas, 60, f"{num_replicas} replicas to report")
        yield url, process, log
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from polyhead.bench.lora import write_random_adapter

    root = tmp_path_factory.mktemp("fleet")
    adapter = write_random_adapter(root / "bikes", default_model_config(), rank=4, seed=0,
                                   targets=("q_proj", "v_proj"))
    flags = ["--replicas", "2", "--kv-cache-memory", "128MiB", "--lora-modules", f"bikes={adapter}",
             "--tasks", str(manifest(root)), "--shutdown-grace", "30"]
    with ray_server(root, flags, num_replicas=2) as (url, process, log):
        yield Fleet(url, process, log)


def manifest(root: Path) -> Path:
    """The shipped chat and zero-shot classifiers on the default backbone, and embed on the second
    (all-MiniLM-L6-v2): two replica deployments."""
    import yaml

    from polyhead.tasks.default import DEFAULT_MANIFEST

    tasks = [t for t in yaml.safe_load(DEFAULT_MANIFEST.read_text())["tasks"]
             if t["name"] in ("chat", "sentiment", "topic", "embed")]
    path = root / "tasks.yaml"
    path.write_text(yaml.safe_dump({"tasks": tasks}))
    return path


class Fleet:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def client(self):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120)


def metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def replica_values(url: str, name: str, backbone: str = MODEL) -> dict[str, float]:
    """replica id -> value of a polyhead_replica_* series, for one backbone's replicas."""
    found = {}
    for line in metrics(url).splitlines():
        match = re.match(rf'{name}\{{(.*)\}} (\S+)$', line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            if labels["backbone"] == backbone:
                found[labels["replica"]] = float(match.group(2))
    return found


def replicas(url: str, backbone: str = MODEL) -> dict[str, int]:
    """replica id -> its process id, as the router last heard, for one backbone's replicas."""
    found = {}
    for line in metrics(url).splitlines():
        if line.startswith("polyhead_replica_info{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels["backbone"] == backbone:
                found[labels["replica"]] = int(labels["pid"])
    return found


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def settled_hits(url: str) -> dict[str, float]:
    """Prefix-hit tokens per replica once the reports (every second) have caught up."""
    time.sleep(2.5)
    return replica_values(url, "polyhead_replica_prefix_cache_hit_tokens_total")


def test_the_api_is_the_single_machine_one(fleet):
    client = fleet.client()
    assert {m.id for m in client.models.list().data} >= {MODEL, "bikes"}
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].message.content and reply.usage.completion_tokens == 8
    chunks = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip().startswith("Paris")
    tasks = httpx.get(f"{fleet.url}/v1/tasks", timeout=10).json()["data"]
    assert {t["id"] for t in tasks} == {"chat", "sentiment", "topic", "embed"}
    vectors = client.embeddings.create(model="embed", input=["a bike", "a bicycle"]).data
    assert len(vectors) == 2 and len(vectors[0].embedding) == 384
    bad = httpx.post(f"{fleet.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": -1})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_a_fan_out_request_is_prefilled_on_one_replica(fleet):
    """Two zero-shot tasks over four inputs: eight rows at once, all sharing one few-shot prompt,
    all on one replica, so that prompt is computed there once. (First of the classify tests: once
    both replicas hold that prompt, spreading its rows by load is right.)"""
    before = settled_hits(fleet.url)
    inputs = [f"Review {i}: the new carbon frame won the mountain race for our team." for i in range(4)]
    answer = httpx.post(f"{fleet.url}/v1/classify", timeout=120,
                        json={"tasks": ["sentiment", "topic"], "input": inputs}).json()
    assert len(answer["data"]) == 8, answer
    after = settled_hits(fleet.url)
    gained = sorted(after.get(r, 0) - before.get(r, 0) for r in after)
    assert gained[0] == 0 and gained[1] > 0, gained


def test_requests_of_both_kinds_spread_across_replicas(fleet):
    """8 chat streams and 4 classify requests at once: both replicas work, all answers come back."""
    client, busy, errors = fleet.client(), set(), []

    def chat(i):
        try:
            stream = client.chat.completions.create(model=MODEL, max_tokens=24, temperature=0, stream=True,
                                                    messages=[{"role": "user", "content": f"Tell me fact {i}."}])
            assert sum(1 for c in stream if c.choices and c.choices[0].delta.content) > 0
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    def classify(i):
        answer = httpx.post(f"{fleet.url}/v1/classify", timeout=120,
                            json={"task": "sentiment", "input": f"Review {i}: the brakes work great now."}).json()
        if answer["data"][0]["label"] not in ("negative", "neutral", "positive"):
            errors.append(answer)

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=classify, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        busy |= {r for r, n in replica_values(fleet.url, "polyhead_replica_unfinished_requests").items() if n}
        time.sleep(0.1)
    assert not errors
    assert busy == set(replicas(fleet.url)), f"only {busy} had work"


def run_together(calls) -> list:
    """Run the calls at once, each on its own thread; their results in order (an exception fails the test)."""
    results = [None] * len(calls)

    def run(i):
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(result is not None for result in results), "a call failed or hung"
    return results


def test_a_shared_prefix_lands_on_the_replica_that_cached_it(fleet):
    """Six requests at once after one that cached their system prompt: power-of-two would spread them
    by load; polyhead's router keeps them where the prompt's blocks are (the load gap stays small)."""
    client = fleet.client()

    def ask(i):
        return lambda: client.chat.completions.create(model=MODEL, max_tokens=2, temperature=0, messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question {i}: are you open?"}])

    first = ask(0)()
    before = settled_hits(fleet.url)
    run_together([ask(i) for i in range(1, 7)])
    after = settled_hits(fleet.url)
    gained = {r: after.get(r, 0) - before.get(r, 0) for r in after}
    # each finds the system prompt's blocks (all but the last partial one and the question), on one replica
    assert max(gained.values()) >= 6 * (first.usage.prompt_tokens - 32), gained
    assert min(gained.values()) == 0, gained


def test_an_adapter_request_goes_where_the_adapter_is_loaded(fleet):
    client = fleet.client()

    def order(i):
        return lambda: client.completions.create(model="bikes", prompt=f"Order {i}: one inner tube, size 28",
                                                 max_tokens=2, temperature=0)

    order(0)()
    wait_for(lambda: sum(replica_values(fleet.url, "polyhead_replica_resident_adapters").values()) == 1, 10,
             "the adapter to load on one replica")
    replies = run_together([order(i) for i in range(1, 7)])
    assert all(reply.usage.completion_tokens == 2 for reply in replies)
    time.sleep(2.5)  # the next routing-stats reports
    resident = replica_values(fleet.url, "polyhead_replica_resident_adapters")
    assert sorted(resident.values()) == [0, 1], resident


def test_a_killed_replica_ends_its_streams_with_an_error_and_is_replaced(fleet):
    client, results = fleet.client(), {}

    def stream(i):
        text, error = "", None
        try:
            for chunk in client.completions.create(model=MODEL, prompt=f"Story {i}: once upon a time",
                                                   max_tokens=120, temperature=0, stream=True):
                text += chunk.choices[0].text if chunk.choices else ""
        except Exception as err:  # noqa: BLE001 - the error chunk, as the client raises it
            error = err
        results[i] = (text, error)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    unfinished = wait_for(lambda: (counts := replica_values(fleet.url, "polyhead_replica_unfinished_requests"))
                          and sum(counts.values()) >= 6 and counts, 30, "all six streams to run")
    victim = replicas(fleet.url)[max(unfinished, key=unfinished.get)]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a stream hung"
    failed = [error for _, error in results.values() if error is not None]
    assert failed, f"no stream saw its replica die: {unfinished}, {results}"
    assert all("replica" in str(error) and "died" in str(error) for error in failed), failed
    # later requests succeed at once on the live replica, and Ray starts a replacement
    assert client.completions.create(model=MODEL, prompt="After the crash", max_tokens=2).usage.completion_tokens == 2
    assert time.monotonic() - killed_at < 60
    wait_for(lambda: len(replicas(fleet.url)) == 2 and victim not in replicas(fleet.url).values(), 120,
             "a replacement replica")
    assert httpx.get(f"{fleet.url}/health", timeout=10).json()["status"] == "ok"


def test_sigterm_drains_what_is_in_flight_and_turns_new_requests_away(fleet):
    client, results = fleet.client(), {}

    def stream(i):
        finish, error = None, None
        try:
            for chunk in client.completions.create(model=MODEL, prompt=f"Poem {i}:", max_tokens=48,
                                                   temperature=0, stream=True, extra_body={"ignore_eos": True}):
                finish = chunk.choices[0].finish_reason if chunk.choices else finish
        except Exception as err:  # noqa: BLE001
            error = err
        results[i] = (finish, error)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: sum(replica_values(fleet.url, "polyhead_replica_unfinished_requests").values()) >= 4, 30,
             "the streams to start")
    fleet.process.send_signal(signal.SIGTERM)
    late = wait_for(lambda: _status_of_new_request(fleet.url), 10, "the drain to begin")
    assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
    for thread in threads:
        thread.join(60)
    assert results == {i: ("length", None) for i in range(4)}  # 0 lost
    assert fleet.process.wait(90) == 0
    assert "requests in flight finish first" in fleet.log.read_text()


def _status_of_new_request(url: str):
    try:
        response = httpx.post(f"{url}/v1/completions", timeout=10, json={"model": MODEL, "prompt": "late",
                                                                         "max_tokens": 1})
    except httpx.HTTPError:
        return None
    return response if response.status_code != 200 else None


def test_scale_out_flags_map_onto_ray_serve_options():
    from polyhead.deploy.application import ScaleOut
    from polyhead.deploy.launch import plan_from_flags

    plan, settings, scale = plan_from_flags({"replicas": 3, "autoscale": "2:6", "threads": 2, "routing": "pow2",
                                             "max_queued_requests": 9})
    assert (scale.replicas, scale.autoscale, scale.num_cpus, scale.routing) == (3, (2, 6), 2, "pow2")
    assert plan.base.num_threads == 2 and settings.max_queued_requests == 9
    with pytest.raises(ValueError, match="--autoscale takes MIN:MAX"):
        ScaleOut.parse_autoscale("6:2")
    with pytest.raises(ValueError, match="--replicas must be at least 1"):
        plan_from_flags({"replicas": 0})
