"""schemathesis over every endpoint of a live multi-task server (the tiny models, real model and
task names): no generated request may get a 5xx, and every error body is in OpenAI's shape."""

import hashlib

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.server.task_fixtures import MODEL, bert, manifest_dir, running_task_server  # noqa: F401 - fixtures

# What `model` / `task` fields get, so requests reach the engines instead of stopping at a 404 or a
# wrong-kind 400; one in five keeps its generated name.
NAMES = {"/v1/completions": [MODEL, "chat", "shout", "shout-lora"], "/v1/chat/completions": [MODEL, "chat", "shout"],
         "/v1/classify": ["sentiment", "yesno"], "/v1/tag": ["ner"], "/v1/embeddings": ["embed", "embed-llm", MODEL],
         "/tokenize": [MODEL, "chat", "shout", "embed"], "/detokenize": [MODEL, "shout-lora", "embed"]}
# per operation: bounded, seconds in all (40 drew no served embeddings request once the tool schemas joined)
MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def live(manifest_dir, tiny_llama):  # noqa: F811
    with running_task_server(manifest_dir[1], tiny_llama[0], "process") as (url, _):
        yield url


def with_real_names(path: str, body):
    """Most generated bodies name a real model or task of their endpoint (picked by their own content,
    so a run is reproducible)."""
    if not isinstance(body, dict) or path not in NAMES:
        return body
    pick = int(hashlib.sha256(repr(sorted(body.items(), key=str)).encode()).hexdigest(), 16)
    for field in ("model", "task"):
        if field in body and pick % 5:
            body[field] = NAMES[path][pick % len(NAMES[path])]
    # A generated message rarely fits the rules the schema cannot say (a tool message answers a call
    # id, content parts hold text): most get a plain text content, and a tool message its call id.
    for message in body.get("messages") or []:
        if isinstance(message, dict) and pick % 5:
            if not isinstance(message.get("content"), str):
                message["content"] = "hi"
            if message.get("role") == "tool":
                message.setdefault("tool_call_id", "call_0")
    return body


def test_no_request_gets_a_5xx_and_errors_are_openai_shaped(live):
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {operation.path for operation in operations}
    assert {"/tokenize", "/detokenize", "/version", "/v1/models", "/health"} | set(NAMES) <= paths, paths
    failures, seen = [], []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.body = with_real_names(case.path, case.body)
            response = case.call(base_url=live, timeout=60)
            seen.append((case.path, response.status_code))
            if response.status_code >= 500:
                failures.append((case.method, case.path, case.body, response.status_code, response.text[:300]))
            elif response.status_code >= 400:
                error = response.json()["error"]
                assert isinstance(error["message"], str) and error["message"], error
                assert {"type", "param", "code"} <= set(error), error

        check()
    assert not failures, failures
    reached = {path for path, status in seen if status == 200}
    assert set(NAMES) | {"/version"} <= reached, f"no generated request was served by {set(NAMES) - reached}"
