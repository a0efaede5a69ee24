"""A server the benchmarks start themselves: a free loopback port, and the wait until /health says 200."""

import socket
import subprocess
import time

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Until GET {url}/health is 200; ValueError when `process` (the server, if started here) exits
    first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            said = process.stderr.read()[-2000:] if process.stderr else ""  # when started with stderr=PIPE
            raise ValueError(f"the server exited with code {process.returncode} before it was healthy. {said}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ValueError(f"{url} was not healthy after {timeout_s:g} s")
