"""Engine kill and recovery on the default model: `polyhead serve` with 8 chat streams running,
`kill -9` of its engine process, then the time until /health answers 200 again and until every
stream has finished; each stream's finish reason and chunk count (none may be lost).

Usage: python scripts/engine_kill_recovery.py [--port 18443] [--streams 8]
"""

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import openai

from polyhead.bench.server_process import wait_healthy


async def stream(client: openai.AsyncOpenAI, i: int) -> tuple[int, str | None]:
    response = await client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": f"Count to {i + 20}"}], max_tokens=128,
        temperature=0, stream=True, extra_body={"ignore_eos": True})
    chunks, reason = 0, None
    async for chunk in response:
        if chunk.choices:
            chunks += 1
            reason = chunk.choices[0].finish_reason or reason
    return chunks, reason


async def kill_and_recover(url: str, engine_pid: int, num_streams: int) -> tuple[float, float, list]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
    tasks = [asyncio.create_task(stream(client, i)) for i in range(num_streams)]
    await asyncio.sleep(2.0)  # every stream is decoding
    killed_at = time.monotonic()
    os.kill(engine_pid, signal.SIGKILL)
    async with httpx.AsyncClient(base_url=url) as http:
        while (await http.get("/health")).status_code == 200:  # until the server has seen the death
            await asyncio.sleep(0.01)
        while (await http.get("/health")).status_code != 200:
            await asyncio.sleep(0.05)
    recovered_s = time.monotonic() - killed_at
    results = await asyncio.gather(*tasks)
    return recovered_s, time.monotonic() - killed_at, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=18443)
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "polyhead.cli", "serve", "--port", str(args.port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(url, 300)
        children = [int(p) for p in subprocess.check_output(["pgrep", "-P", str(server.pid)]).split()]
        engine_pid = max(children)  # the spawned engine process (multiprocessing's resource tracker starts first)
        recovered_s, done_s, results = asyncio.run(kill_and_recover(url, engine_pid, args.streams))
        lost = sum(1 for _, reason in results if reason != "length")
        print(f"kill -9 of the engine process {engine_pid}: /health 200 again after {recovered_s:.2f} s; all "
              f"{len(results)} streams done {done_s:.2f} s after the kill; lost {lost}; (chunks, finish) {results}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
