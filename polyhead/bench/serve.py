"""Serving benchmark over the OpenAI HTTP protocol: polyhead's server or any compatible one
(llama.cpp's llama-server, `transformers serve`, vLLM), measured the same way from outside.

Every request streams. Closed loop (`--concurrency`): that many clients, each sending its next
request when the previous one ends. Open loop (`--rate`): seeded Poisson arrivals, whatever is in flight.

To make every server generate exactly `--output-len` tokens, the body carries fields beyond OpenAI's:
`ignore_eos` (polyhead, vLLM, llama.cpp), `min_tokens` (vLLM) and `n_predict` (llama.cpp's max_tokens).
Servers that reject unknown fields (`transformers serve` answers 422) are detected by the warm-up
request, which is then retried without them; the report's output tokens are what the server produced.
"""

import argparse
import asyncio
import json
import random
import shlex
import sys
import time

import httpx

from polyhead.bench.report import RequestResult, build_report, markdown_table, plot_runs, summarize_level

TEXT = (
    "The harbour was quiet before dawn, and the fishing boats rocked against their ropes while gulls circled "
    "over the grey water. Engineers who build inference servers care about latency, throughput and memory, "
    "and they measure each one before they change anything. A recipe for bread needs flour, water, salt and "
    "patience; the dough rests overnight and bakes in a very hot oven. Mountains catch the clouds, so the "
    "western valleys are green while the eastern plains stay dry for most of the year."
)
WORDS_PER_TOKEN = 0.75  # English text averages about four tokens for three words


def make_prompts(num: int, input_len: int, seed: int) -> list[str]:
    """`num` prompts of about `input_len` tokens: windows of a fixed text at seeded offsets, wrapping."""
    words, rng = TEXT.split(), random.Random(seed)
    num_words = max(1, round(input_len * WORDS_PER_TOKEN))
    starts = [rng.randrange(len(words)) for _ in range(num)]
    return [" ".join(words[(start + i) % len(words)] for i in range(num_words)) for start in starts]


def request_body(endpoint: str, model: str, prompt: str, output_len: int, length_hints: bool = True) -> dict:
    """A streaming request whose final chunk reports usage (OpenAI's include_usage)."""
    body = {"model": model, "max_tokens": output_len, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    body |= {"messages": [{"role": "user", "content": prompt}]} if endpoint == "chat" else {"prompt": prompt}
    if length_hints:  # see the module note: each name is some server's way to forbid an early stop
        body |= {"ignore_eos": True, "min_tokens": output_len, "n_predict": output_len}
    return body


class SSEParser:
    """Server-sent events from arbitrary byte chunks: `feed` returns the `data` payloads completed so far.

    Lines are split on bytes, so a multi-byte character or a line cut between network reads is kept
    whole; an event ends at a blank line and its `data:` lines are joined with newlines."""

    def __init__(self):
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        payloads = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8")
            if not line:
                if self._data:
                    payloads.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                self._data.append(line[5:].removeprefix(" "))
        return payloads


def read_payload(payload: dict) -> tuple[str, dict | None, str | None]:
    """(text, usage, error) of one streamed chunk of either endpoint."""
    if not isinstance(payload, dict):
        return "", None, f"unexpected chunk: {str(payload)[:100]}"
    if "error" in payload:
        error = payload["error"]
        return "", None, error.get("message", str(error)) if isinstance(error, dict) else str(error)
    text = ""
    for choice in payload.get("choices") or []:
        text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    return text, payload.get("usage"), None


async def send_request(client: httpx.AsyncClient, path: str, body: dict, timeout: float) -> RequestResult:
    """Stream one request; failures become the result's `error`, never an exception."""
    start = time.perf_counter()
    ttft, chunks, usage, error = None, 0, None, None
    try:
        async with asyncio.timeout(timeout), client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")[:200]
                return RequestResult(time.perf_counter() - start, error=f"HTTP {response.status_code}: {text}")
            parser = SSEParser()
            async for data in response.aiter_bytes():
                for payload in parser.feed(data):
                    if payload == "[DONE]":
                        continue
                    text, usage_now, error = read_payload(json.loads(payload))
                    if error is not None:  # the status line said 200, the stream says otherwise
                        return RequestResult(time.perf_counter() - start, ttft, chunks, error=error)
                    if text:
                        ttft = time.perf_counter() - start if ttft is None else ttft
                        chunks += 1
                    usage = usage_now or usage
    except TimeoutError:
        error = f"timeout after {timeout:g} s"
    except (httpx.HTTPError, OSError, ValueError) as err:  # a broken connection or bad chunk fails one request
        error = f"{type(err).__name__}: {err}"
    e2e = time.perf_counter() - start
    if error is None and ttft is None:
        error = "the stream ended without any text"
    usage = usage or {}
    return RequestResult(e2e, ttft, usage.get("completion_tokens") or chunks, usage.get("prompt_tokens"), error)


async def run_closed_level(client, path: str, bodies: list[dict], concurrency: int, timeout: float,
                           progress) -> list[RequestResult]:
    """`concurrency` clients, each sending the next body as soon as its previous request ends."""
    results: list[RequestResult | None] = [None] * len(bodies)
    pending = iter(range(len(bodies)))

    async def client_loop():
        for i in pending:  # the iterator is shared: each index goes to exactly one client
            results[i] = await send_request(client, path, bodies[i], timeout)
            progress.update(1)

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return results


async def run_open_level(client, path: str, bodies: list[dict], rate: float, seed: int, timeout: float,
                         progress) -> list[RequestResult]:
    """Requests arrive as a Poisson process of `rate` per second (seeded), however many are in flight."""
    rng = random.Random(seed)

    async def one(body):
        result = await send_request(client, path, body, timeout)
        progress.update(1)
        return result

    tasks = []
    for i, body in enumerate(bodies):
        if i:
            await asyncio.sleep(rng.expovariate(rate))
        tasks.append(asyncio.create_task(one(body)))
    return list(await asyncio.gather(*tasks))


def first_model(url: str, headers: dict, timeout: float) -> str:
    try:
        response = httpx.get(f"{url}/v1/models", headers=headers, timeout=timeout)
        response.raise_for_status()
        return response.json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:  # the CLI prints ValueErrors plainly
        raise ValueError(f"cannot read a model name from {url}/v1/models ({err}); pass --model") from err


async def warm_up(client, path: str, args, model: str, prompt: str) -> None:
    """One untimed request, so first-request costs stay out of level 1 and a strict server shows itself:
    if it refuses the length hints with a 4xx but takes the plain body, the run goes on without them."""
    warm = await send_request(client, path, request_body(args.endpoint, model, prompt, 4, args.length_hints),
                              args.timeout)
    if warm.error and args.length_hints and warm.error.startswith("HTTP 4"):
        plain = await send_request(client, path, request_body(args.endpoint, model, prompt, 4, False), args.timeout)
        if plain.error is None:
            args.length_hints, warm = False, plain
            print("the server refused ignore_eos / min_tokens / n_predict: sending without them, so replies may "
                  "stop at EOS before --output-len", file=sys.stderr)
    if warm.error:
        print(f"warm-up request failed: {warm.error}", file=sys.stderr)


async def run_levels(args, model: str, headers: dict) -> list[dict]:
    from tqdm import tqdm

    path = "/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions"
    prompts = make_prompts(args.num_requests, args.input_len, args.seed)
    # No keep-alive: some servers (llama-server) close idle connections, and reusing one would
    # count as a server error; a fresh loopback connection per request costs well under 1 ms.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=args.timeout, limits=limits) as client:
        await warm_up(client, path, args, model, prompts[0])
        bodies = [request_body(args.endpoint, model, p, args.output_len, args.length_hints) for p in prompts]
        rows = []
        for level in args.rate or args.concurrency:
            with tqdm(total=len(bodies), desc=f"rate {level:g}/s" if args.rate else f"concurrency {level}",
                      unit="req") as progress:
                start = time.perf_counter()
                if args.rate:
                    results = await run_open_level(client, path, bodies, level, args.seed, args.timeout, progress)
                else:
                    results = await run_closed_level(client, path, bodies, level, args.timeout, progress)
                wall = time.perf_counter() - start
            rows.append(summarize_level(results, wall, None if args.rate else level, level if args.rate else None))
    return rows


def run_serve(args) -> int:
    if args.num_requests < 1 or min(args.rate or args.concurrency) <= 0:
        raise ValueError("--num-requests, --concurrency and --rate must be positive")
    if not args.rate and max(args.concurrency) > args.num_requests:
        # fewer requests than clients would leave clients idle: the level would not be what it says
        raise ValueError(f"--num-requests ({args.num_requests}) must be at least the highest --concurrency "
                         f"({max(args.concurrency)}), or the extra clients would send nothing")
    args.url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = args.model or first_model(args.url, headers, args.timeout)
    label = args.label or args.url
    rows = asyncio.run(run_levels(args, model, headers))
    command = shlex.join(sys.argv)
    print(f"\n{label}: model {model}, {args.endpoint}, prompt ~{args.input_len} tokens, {args.output_len} new "
          f"tokens, {args.num_requests} requests per level\n$ {command}")
    print(markdown_table(rows))
    for row in (row for row in rows if row["num_errors"]):
        print(f"{row['num_errors']} errors at level {row['rate'] or row['concurrency']}, e.g. "
              + "; ".join(row["error_samples"]), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(build_report(command, vars(args) | {"func": None, "api_key": None}, label, model, rows),
                      f, indent=2)
    if args.plot:
        plot_runs({label: rows}, args.plot)
    return 0


DESCRIPTION = ("Latency and throughput of an OpenAI-compatible server (polyhead, llama-server, transformers "
               "serve, vLLM) under closed-loop concurrency or open-loop Poisson load, streaming every request.")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (default: %(default)s)")
    p.add_argument("--model", default=None, help="model name to send (default: the first of GET /v1/models)")
    p.add_argument("--endpoint", default="completions", choices=["completions", "chat"],
                   help="POST /v1/completions with a prompt, or /v1/chat/completions with one user message")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 32],
                   help="closed loop: comma-separated client counts (default: 1,4,16,32)")
    p.add_argument("--rate", type=lambda s: [float(x) for x in s.split(",")], default=None,
                   help="open loop instead: comma-separated Poisson arrival rates in requests/s")
    p.add_argument("--num-requests", type=int, default=64, help="requests per level (default: 64)")
    p.add_argument("--input-len", type=int, default=32, help="prompt tokens, approximately (default: 32)")
    p.add_argument("--output-len", type=int, default=128,
                   help="max_tokens per request, also sent as ignore_eos / min_tokens / n_predict (default: 128)")
    p.add_argument("--no-length-hints", dest="length_hints", action="store_false",
                   help="send only OpenAI's fields, not ignore_eos / min_tokens / n_predict")
    p.add_argument("--api-key", default=None, help="bearer key for the server")
    p.add_argument("--seed", type=int, default=0, help="prompt windows and arrival times (default: 0)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: 600)")
    p.add_argument("--label", default=None, help="name of the server in the report (default: the URL)")
    p.add_argument("--json", default=None, help="write args, rows and machine info to this JSON file")
    p.add_argument("--plot", default=None, help="write output tok/s and TTFT p99 per level to this PNG")
    p.set_defaults(func=run_serve)


def add_serve_parser(commands) -> None:
    p = commands.add_parser("serve", help="latency and throughput of an OpenAI-compatible server",
                            description=DESCRIPTION)
    add_serve_arguments(p)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m polyhead.bench.serve", description=DESCRIPTION)
    add_serve_arguments(parser)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
