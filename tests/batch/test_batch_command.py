"""`polyhead batch` end to end on tiny random models: every endpoint a line may call, answers equal to
the live server's for the same bodies, bad lines as error lines, input order, and resuming."""

import json

import httpx
import pytest

from polyhead.cli import main
from tests.server.conftest import running_server
from tests.server.task_fixtures import bert, manifest_dir  # noqa: F401

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 0}
LINES = [
    {"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions", "body": CHAT},
    {"custom_id": "cmpl-1", "method": "POST", "url": "/v1/completions",
     "body": {"model": "tiny", "prompt": "the sea", "max_tokens": 5, "temperature": 0, "n": 2}},
    "this line is not JSON",
    {"custom_id": "emb-1", "method": "POST", "url": "/v1/embeddings", "body": {"model": "tiny", "input": ["a", "b"]}},
    {"custom_id": "bad-temp", "method": "POST", "url": "/v1/chat/completions", "body": {**CHAT, "temperature": 9}},
    {"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions", "body": CHAT},
    {"custom_id": "stream", "method": "POST", "url": "/v1/chat/completions", "body": {**CHAT, "stream": True}},
    {"custom_id": "get", "method": "GET", "url": "/v1/models", "body": {}},
    {"custom_id": "surrogate", "method": "POST", "url": "/v1/completions",
     "body": {"model": "tiny", "prompt": "\ud800 x"}},
]


def write_input(path, lines):
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines) + "\n")


def run_batch(tiny_folder, input_path, output_path, *extra) -> int:
    return main(["batch", str(input_path), str(output_path), "--model", str(tiny_folder), "--dtype", "float32",
                 "--kv-cache-memory", "16MiB", "--max-model-len", "128", "--engine-mode", "thread", "--no-progress",
                 "--served-model-name", "tiny", "--default-max-tokens", "8", *extra])


def read_output(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    write_input(folder / "input.jsonl", LINES)
    assert run_batch(tiny_llama[0], folder / "input.jsonl", folder / "output.jsonl") == 0
    return folder, read_output(folder / "output.jsonl")


def test_every_line_is_answered_in_input_order(first_run):
    _, outputs = first_run
    assert [o["custom_id"] for o in outputs] == ["chat-1", "cmpl-1", None, "emb-1", "bad-temp", "chat-1", "stream",
                                                 "get", "surrogate"]
    assert len({o["id"] for o in outputs}) == len(outputs) and all(o["id"].startswith("batch_req_") for o in outputs)
    by_id = {o["custom_id"]: o for o in outputs[:2]}
    assert by_id["chat-1"]["response"]["status_code"] == 200 and by_id["chat-1"]["error"] is None
    assert by_id["chat-1"]["response"]["body"]["object"] == "chat.completion"
    assert [c["index"] for c in by_id["cmpl-1"]["response"]["body"]["choices"]] == [0, 1]
    assert len(outputs[3]["response"]["body"]["data"]) == 2


def test_bad_lines_become_error_lines(first_run):
    _, outputs = first_run
    assert outputs[2]["error"]["code"] == "invalid_json" and outputs[2]["line"] == 3 and outputs[2]["response"] is None
    bad_temp = outputs[4]["response"]
    assert bad_temp["status_code"] == 400 and bad_temp["body"]["error"]["param"] == "temperature"
    assert outputs[5]["error"]["code"] == "duplicate_custom_id"
    assert outputs[6]["error"]["code"] == "invalid_body" and "stream" in outputs[6]["error"]["message"]
    assert outputs[7]["error"]["code"] == "invalid_method"
    assert outputs[8]["response"]["status_code"] == 400 and "surrogate" in outputs[8]["response"]["body"]["error"][
        "message"]


def test_answers_equal_the_live_servers(first_run, tiny_llama):
    _, outputs = first_run
    with running_server(tiny_llama[0]) as (url, _):
        live = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).json()
        embedded = httpx.post(f"{url}/v1/embeddings", json=LINES[3]["body"], timeout=60).json()
    batch = outputs[0]["response"]["body"]
    assert batch["choices"][0]["message"] == live["choices"][0]["message"] and batch["usage"] == live["usage"]
    for ours, theirs in zip(outputs[3]["response"]["body"]["data"], embedded["data"]):
        assert ours["embedding"] == pytest.approx(theirs["embedding"], abs=1e-5)


def test_a_rerun_skips_what_is_written_and_finishes_a_cut_line(first_run, tiny_llama, tmp_path):
    folder, outputs = first_run
    kept = (folder / "output.jsonl").read_text().splitlines(keepends=True)[:3]
    resumed = tmp_path / "output.jsonl"
    resumed.write_text("".join(kept) + kept[0][:20])  # a kill in the middle of the fourth line
    assert run_batch(tiny_llama[0], folder / "input.jsonl", resumed) == 0
    again = read_output(resumed)
    assert again[:3] == outputs[:3]  # the same ids: not run again
    assert [o["custom_id"] for o in again] == [o["custom_id"] for o in outputs]
    assert again[3]["id"] != outputs[3]["id"] and again[3]["response"]["body"]["data"]
    assert run_batch(tiny_llama[0], folder / "input.jsonl", resumed) == 0
    assert read_output(resumed) == again  # all written: nothing to do


def test_classify_and_tag_lines_run_with_a_manifest(tiny_llama, manifest_dir, tmp_path):  # noqa: F811
    lines = [{"custom_id": "c", "method": "POST", "url": "/v1/classify", "body": {"task": "sentiment", "input": "ok"}},
             {"custom_id": "t", "method": "POST", "url": "/v1/tag", "body": {"task": "ner", "input": "Alice in Paris"}},
             {"custom_id": "x", "method": "POST", "url": "/v1/classify", "body": {"task": "nope", "input": "ok"}}]
    write_input(tmp_path / "in.jsonl", lines)
    assert run_batch(tiny_llama[0], tmp_path / "in.jsonl", tmp_path / "out.jsonl", "--tasks",
                     str(manifest_dir[1])) == 0
    classify, tag, unknown = read_output(tmp_path / "out.jsonl")
    assert classify["response"]["body"]["data"][0]["labels"] == ["neg", "neu", "pos"]
    assert tag["response"]["status_code"] == 200 and "entities" in tag["response"]["body"]["data"][0]
    assert unknown["response"]["status_code"] == 404 and unknown["response"]["body"]["error"]["param"] == "task"


def test_a_missing_input_is_an_error_naming_it(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "none.jsonl"), str(tmp_path / "out.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err


def test_a_killed_run_loses_nothing_it_wrote(tiny_llama, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    body = {"model": "tiny", "prompt": "count", "max_tokens": 24, "ignore_eos": True, "temperature": 0}
    write_input(tmp_path / "in.jsonl", [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                                         "body": body} for i in range(100)])
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "polyhead.cli", "batch", str(tmp_path / "in.jsonl"), str(output), "--model",
               str(tiny_llama[0]), "--dtype", "float32", "--kv-cache-memory", "16MiB", "--max-model-len", "128",
               "--engine-mode", "thread", "--no-progress", "--served-model-name", "tiny", "--max-concurrency", "8"]
    run = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": os.getcwd()}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (output.exists() and output.read_bytes().count(b"\n") >= 5):
        assert run.poll() is None and time.monotonic() < deadline, "the run ended (or hung) before it was killed"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait(30)
    written = output.read_bytes()
    complete = [json.loads(line) for line in written[:written.rfind(b"\n") + 1].splitlines()]
    assert 5 <= len(complete) < 100, "killed mid-run"
    assert [o["custom_id"] for o in complete] == [f"r{i}" for i in range(len(complete))]
    assert run_batch(tiny_llama[0], tmp_path / "in.jsonl", output) == 0
    final = read_output(output)
    assert final[:len(complete)] == complete and [o["custom_id"] for o in final] == [f"r{i}" for i in range(100)]
    assert all(o["response"]["status_code"] == 200 for o in final)


def test_an_output_that_is_not_batch_output_is_refused(tiny_llama, tmp_path, capsys):
    write_input(tmp_path / "in.jsonl", LINES[:1])
    (tmp_path / "notes.txt").write_text("my notes\n")
    assert run_batch(tiny_llama[0], tmp_path / "in.jsonl", tmp_path / "notes.txt") == 2
    assert "notes.txt line 1 is not a batch output line" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"
