"""/health latency while a large prompt is tokenized: starts `polyhead serve` (default model) on a
free port, polls /health every 10 ms, sends one prompt of --prompt-bytes and prints the worst and
median /health latency during it (and the big request's status and time).

    python scripts/health_under_big_prompt.py --prompt-bytes 1000000 [--chat]
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt-bytes", type=int, default=1_000_000)
    parser.add_argument("--chat", action="store_true", help="send it as a chat message (templating too)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "polyhead.cli", "serve", "--port", str(port),
                               "--max-request-bytes", str(4 << 20)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "server did not come up"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        text = ("the quick brown fox jumps over the lazy dog " * (args.prompt_bytes // 44 + 1))[:args.prompt_bytes]
        for _ in range(args.repeats):
            latencies, done = [], threading.Event()

            def poll(latencies=latencies, done=done):
                with httpx.Client(timeout=30) as client:
                    while not done.is_set():
                        start = time.perf_counter()
                        client.get(f"{url}/health")
                        latencies.append(time.perf_counter() - start)
                        time.sleep(0.01)

            poller = threading.Thread(target=poll)
            poller.start()
            time.sleep(0.2)
            start = time.perf_counter()
            if args.chat:
                response = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                    "model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": text}], "max_tokens": 1})
            else:
                response = httpx.post(f"{url}/v1/completions", timeout=120, json={
                    "model": "SmolLM2-135M-Instruct", "prompt": text, "max_tokens": 1})
            took = time.perf_counter() - start
            time.sleep(0.2)
            done.set()
            poller.join()
            print(f"prompt {args.prompt_bytes} B ({'chat' if args.chat else 'completion'}): status "
                  f"{response.status_code} in {took:.2f} s; /health max {max(latencies) * 1000:.0f} ms, "
                  f"p50 {statistics.median(latencies) * 1000:.1f} ms over {len(latencies)} polls", flush=True)
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
