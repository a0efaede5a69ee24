"""`polyhead serve` as a client meets it: the CLI in a subprocess on a free local port, around the
tiny random model, stopped (killed if need be) when the test leaves."""

import os
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx

from tests.conftest import free_port

MODEL = "tiny"


@contextmanager
def cli_server(model_folder, *flags: str, start_timeout_s: float = 60):
    """Yields (url, process) once /health answers 200."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "polyhead.cli", "serve", "--model", str(model_folder), "--served-model-name", MODEL,
         "--port", str(port), "--dtype", "float32", "--kv-cache-memory", "16MiB", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            assert process.poll() is None, f"the server exited with {process.returncode} (flags {flags})"
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    return error
