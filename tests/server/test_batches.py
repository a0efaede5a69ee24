"""/v1/files and /v1/batches on a live server, through the official openai client: upload, create,
wait, download the output, cancel, list; errors naming their field; a job resumed after a restart."""

import io
import json
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.server.conftest import running_server

JSON = {"content-type": "application/json"}  # bodies sent as json.dumps text: ASCII escapes carry a lone surrogate
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}


def batch_file(num_lines: int, body: dict = CHAT, url: str = "/v1/chat/completions") -> bytes:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": url, "body": body} for i in range(num_lines)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def wait_for(client: OpenAI, batch_id: str, statuses=("completed", "failed", "cancelled"), timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while (batch := client.batches.retrieve(batch_id)).status not in statuses:
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.05)
    return batch


@pytest.fixture(scope="module")
def live(tiny_llama, tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    with running_server(tiny_llama[0], state_dir=str(state), max_batch_concurrency=4) as (url, _):
        yield OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0), url, state


def test_a_batch_runs_to_its_output_file(live):
    client, url, _ = live
    lines = batch_file(5) + b'{"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", ' \
                            b'"body": {"model": "tiny", "messages": []}}\nnot json\n'
    upload = client.files.create(file=("requests.jsonl", io.BytesIO(lines)), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == len(lines) and upload.filename == "requests.jsonl"
    assert client.files.retrieve(upload.id).id == upload.id
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"job": "nightly"})
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"job": "nightly"}
    batch = wait_for(client, batch.id)
    assert batch.status == "completed" and batch.completed_at is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (7, 5, 2)
    outputs = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in outputs] == [f"r{i}" for i in range(5)]
    live_answer = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).json()
    for output in outputs:
        assert output["response"]["status_code"] == 200
        assert output["response"]["body"]["choices"][0]["message"] == live_answer["choices"][0]["message"]
    errors = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert errors[0]["custom_id"] == "bad" and errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["param"] == "messages"
    assert errors[1]["error"]["code"] == "invalid_json"
    assert batch.id in [b.id for b in client.batches.list()]
    first_page = client.files.list(limit=1)
    assert len(first_page.data) == 1 and first_page.has_more  # the upload and the output file, newest first
    assert [f.id for f in client.files.list()] == [first_page.data[0].id] + [
        f.id for f in client.files.list(after=first_page.data[0].id)]
    assert {upload.id, batch.output_file_id} <= {f.id for f in client.files.list()}


def test_a_cancelled_batch_keeps_what_finished(live):
    client, _, _ = live
    long = {**CHAT, "max_tokens": 100, "ignore_eos": True}
    upload = client.files.create(file=("long.jsonl", io.BytesIO(batch_file(40, long))), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(client, batch.id, ("in_progress",))
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = wait_for(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    done = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert len(done) < 40 and all(o["response"]["status_code"] == 200 for o in done)
    positions = [int(o["custom_id"][1:]) for o in done]
    assert positions == sorted(positions)  # what finished, in input order
    one = client.files.create(file=("one.jsonl", io.BytesIO(batch_file(1))), purpose="batch")
    finished = wait_for(client, client.batches.create(input_file_id=one.id, endpoint="/v1/chat/completions",
                                                      completion_window="24h").id)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(finished.id)


@pytest.mark.parametrize(("request_body", "status", "param"), [
    ({"input_file_id": "file-" + "0" * 32, "endpoint": "/v1/chat/completions", "completion_window": "24h"}, 404,
     "input_file_id"),
    ({"input_file_id": "x", "endpoint": "/v1/models", "completion_window": "24h"}, 400, "endpoint"),
    ({"input_file_id": "x", "endpoint": "/v1/embeddings", "completion_window": "1h"}, 400, "completion_window"),
    ({"endpoint": "/v1/embeddings"}, 400, "input_file_id"),
    ({"input_file_id": "x", "endpoint": "/v1/embeddings", "metadata": {"k": "\ud800"}}, 400, "metadata"),
])
def test_bad_batch_requests_name_their_field(live, request_body, status, param):
    _, url, _ = live
    out = httpx.post(f"{url}/v1/batches", content=json.dumps(request_body), headers=JSON, timeout=30)
    assert out.status_code == status and out.json()["error"]["param"] == param, out.text


def test_bad_uploads_and_unknown_ids_name_their_field(live):
    client, url, _ = live
    out = httpx.post(f"{url}/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "fine-tune"})
    assert out.status_code == 400 and out.json()["error"]["param"] == "purpose"
    out = httpx.post(f"{url}/v1/files", data={"purpose": "batch"})
    assert out.status_code == 400 and out.json()["error"]["param"] == "file"
    for path in ("/v1/files/file-nope", "/v1/files/../../etc/passwd/content", "/v1/batches/batch_nope"):
        out = httpx.get(f"{url}{path}", timeout=30)
        assert out.status_code == 404 and out.json()["error"]["type"] == "not_found_error", path
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-" + "f" * 32)


def test_uploads_have_their_own_size_limit(tiny_llama, tmp_path):
    with running_server(tiny_llama[0], state_dir=str(tmp_path), max_file_bytes=1000) as (url, _):
        out = httpx.post(f"{url}/v1/files", files={"file": ("a.jsonl", b"x" * 2000)}, data={"purpose": "batch"})
        assert out.status_code == 413 and "max_file_bytes" in out.json()["error"]["message"]
        small = httpx.post(f"{url}/v1/files", files={"file": ("a.jsonl", batch_file(2))}, data={"purpose": "batch"})
        assert small.status_code == 200 and small.json()["bytes"] == len(batch_file(2))
        too_big = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x" * (1 << 20)}, timeout=30)
        assert too_big.status_code == 413 and "max_request_bytes" in too_big.json()["error"]["message"]


def test_a_job_running_when_the_server_stops_resumes_at_the_next_start(tiny_llama, tmp_path):
    long = {**CHAT, "max_tokens": 40, "ignore_eos": True}
    with running_server(tiny_llama[0], state_dir=str(tmp_path), max_batch_concurrency=2) as (url, _):
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        upload = client.files.create(file=("r.jsonl", io.BytesIO(batch_file(30, long))), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        working = tmp_path / "batches" / f"{batch.id}.output.jsonl"
        deadline = time.monotonic() + 60
        while not (working.exists() and working.read_bytes().count(b"\n") >= 2):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    # stopped mid-job: the job is still in progress on disk, with what finished written
    assert json.loads((tmp_path / "batches" / f"{batch.id}.json").read_text())["status"] == "in_progress"
    written = [json.loads(line) for line in working.read_text().splitlines()]
    assert 2 <= len(written) < 30
    with running_server(tiny_llama[0], state_dir=str(tmp_path)) as (url, _):
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        resumed = wait_for(client, batch.id)
        outputs = [json.loads(x) for x in client.files.content(resumed.output_file_id).text.splitlines()]
    assert resumed.status == "completed" and resumed.request_counts.completed == 30
    assert [o["custom_id"] for o in outputs] == [f"r{i}" for i in range(30)]  # each once, in input order
    assert {o["id"] for o in written} <= {o["id"] for o in outputs}  # kept, not run again


def test_a_batch_cancelled_at_once_ends_cancelled(live):
    client, url, _ = live
    upload = client.files.create(file=("r.jsonl", io.BytesIO(batch_file(3))), purpose="batch")
    created = httpx.post(f"{url}/v1/batches", json={"input_file_id": upload.id, "endpoint": "/v1/chat/completions",
                                                    "completion_window": "24h"}, timeout=30).json()
    client.batches.cancel(created["id"])  # most likely before its task first ran
    batch = wait_for(client, created["id"])
    assert batch.status in ("cancelled", "completed") and batch.output_file_id is not None
