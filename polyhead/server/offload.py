"""Tokenization and chat templating of large inputs on a worker thread, off the event loop.

A 1 MB prompt takes the default model's tokenizer ~0.5 s; on the event loop that stalled every
other connection, /health included, for as long. The tokenizers' Rust code releases the GIL, so on
a thread the loop keeps answering meanwhile. Small inputs stay on the loop, where the hop would
cost more than the work. One worker: large inputs are rare enough to take turns, and more threads
would only contend for the same cores.
"""

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

OFFLOAD_MIN_SIZE = 16_384  # characters (or token ids) from which an input is tokenized on the worker

_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polyhead-tokenize")


def input_size(value) -> int:
    """Characters in a request's text (strings, lists and dicts of them), token ids counted one each."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(input_size(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(input_size(item) for item in value)
    return 1


async def tokenize_off_loop(size: int, fn, /, *args, **kwargs):
    """fn(*args, **kwargs): on the worker thread when `size` (input_size of its input) is large."""
    if size < OFFLOAD_MIN_SIZE:
        return fn(*args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_worker, functools.partial(fn, *args, **kwargs))
