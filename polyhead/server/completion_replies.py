"""How a completion or chat completion answers: the whole JSON response, or server-sent events
that interleave the choices' chunks as they come (tool calls told apart from content, the echo
first, usage last), and the clock that times each HTTP request for the metrics. The request side,
what a body means and which engine requests it becomes, is polyhead/server/completions.py."""

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from polyhead.engine.core.outputs import RequestOutput
from polyhead.engine.decoder.grammar_source import GRAMMAR_ERROR_PREFIX
from polyhead.server.errors import APIError, deadline_error, error_chunk, exception_chunk
from polyhead.server.tool_parser import ToolCallStream, parse_reply
from polyhead.server.tools import ToolPlan


def grammar_refusal(failed: RequestOutput, body) -> APIError | None:
    """A 400 naming the field when the engine failed a choice because of its grammar (one of
    llguidance's limits, met while generating): the client's input, not the engine, is at fault."""
    if not (failed.error or "").startswith(GRAMMAR_ERROR_PREFIX):
        return None
    field = "response_format" if body.structured_outputs is None else "structured_outputs"
    return APIError(400, field + failed.error.removeprefix(GRAMMAR_ERROR_PREFIX), field, "invalid_grammar")


class EventStream(StreamingResponse):
    """The SSE response, which closes its engine streams however it ends: the client may leave
    before the body's generator first runs, and then the generator's own cleanup never does."""

    def __init__(self, events: AsyncIterator[str], streams: list, clock: "Clock"):
        super().__init__(events, media_type="text/event-stream")
        self.streams, self.clock = streams, clock

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # runs sse_events's cleanup now if it is paused at a yield
            for stream in self.streams:
                stream.close()
            self.clock.done("aborted", 0)  # if nothing was recorded yet


class Clock:
    """Times one HTTP request for the metrics: first token, end, status."""

    def __init__(self, task: str, metrics):
        self.task, self.metrics = task, metrics
        self.start, self.first_token_at = time.monotonic(), None
        self.is_done = False

    def saw(self, output: RequestOutput) -> None:
        if self.first_token_at is None and output.new_token_ids:
            self.first_token_at = time.monotonic()

    def done(self, status: str, num_tokens: int) -> None:
        """Once per HTTP request: later calls are ignored."""
        if self.metrics is not None and not self.is_done:
            self.is_done = True
            now = time.monotonic()
            ttft = None if self.first_token_at is None else self.first_token_at - self.start
            self.metrics.record(self.task, status, ttft, now - self.start, num_tokens)


async def sse_events(streams, body, kind: str, response_id: str, timeout: float, clock: Clock, n: int,
               echoes: list[str] | None, tools: ToolPlan | None) -> AsyncIterator[str]:
    created = int(time.time())
    tool_streams = {i: ToolCallStream(tools.names, tools.max_calls) for i in range(len(streams))} if tools else {}
    merged: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.create_task(_pump(i, s, merged)) for i, s in enumerate(streams)]
    finals: dict[int, RequestOutput] = {}
    status = "aborted"  # unless it completes: a client that leaves mid-stream ends here
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        if kind == "chat.completion":  # OpenAI opens every chat choice with the assistant role
            for i in range(len(streams)):
                yield _event(_chunk(response_id, created, body.model, kind, i, {"role": "assistant", "content": ""}))
        for i, echo in enumerate(echoes or []):  # echo: the prompt's text opens each choice
            yield _event(_chunk(response_id, created, body.model, kind, i, echo))
        while len(finals) < len(streams):
            try:
                async with asyncio.timeout_at(deadline):
                    index, output = await merged.get()
            except TimeoutError:
                output = None
            if output is None or getattr(output, "finish_reason", None) == "timeout":
                status = "timeout"  # the server's timer or the engine's deadline: the same one
                yield _event(error_chunk(deadline_error(timeout).message, 408, "timeout"))
                return
            if isinstance(output, BaseException):
                status = "error"
                yield _event(exception_chunk(output))
                return
            if output.finish_reason == "error":  # the engine failed this choice: an error, not a finish
                status = "error"
                grammar_error = grammar_refusal(output, body)
                yield _event(error_chunk(output.error or "the engine failed on this request") if grammar_error is None
                             else error_chunk(grammar_error.message, 400, grammar_error.code))
                return
            clock.saw(output)
            if output.finished:
                finals[index] = output
            if index in tool_streams:  # content and calls as the parser tells them apart
                calls = tool_streams[index]
                for delta in calls.deltas(output.new_text, output.finished):
                    yield _event(_chunk(response_id, created, body.model, kind, index, delta))
                if output.finished:
                    yield _event(_chunk(response_id, created, body.model, kind, index, {},
                                        _openai_finish_reason(output, calls.has_calls)))
            elif output.new_text or output.finished:
                delta = {"content": output.new_text} if kind == "chat.completion" else output.new_text
                yield _event(_chunk(response_id, created, body.model, kind, index, delta,
                                    _openai_finish_reason(output) if output.finished else None))
        status = "ok"
        if body.include_usage:
            yield _event({"id": response_id, "object": f"{kind}.chunk", "created": created, "model": body.model,
                          "choices": [], "usage": _usage([finals[i] for i in sorted(finals)], n)})
        yield "data: [DONE]\n\n"
    finally:  # the client may be gone: stop pumping and free every choice still running
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()
        clock.done(status, sum(len(o.token_ids) for o in finals.values()))


async def _pump(index: int, stream, merged: asyncio.Queue) -> None:
    try:
        async for output in stream:
            merged.put_nowait((index, output))
    except Exception as err:  # noqa: BLE001 - handed to the response, which reports it
        merged.put_nowait((index, err))


def _chunk(response_id, created, model, kind, index, delta, finish_reason=None) -> dict:
    choice = {"index": index, "finish_reason": finish_reason}
    choice.update({"delta": delta} if kind == "chat.completion" else {"text": delta, "logprobs": None})
    return {"id": response_id, "object": f"{kind}.chunk" if kind == "chat.completion" else kind,
            "created": created, "model": model, "choices": [choice]}


def full_response(finals: list[RequestOutput], model: str, kind: str, response_id: str, tokenizer, n: int,
                   echoes: list[str] | None, tools: ToolPlan | None) -> dict:
    choices = []
    for i, out in enumerate(finals):
        choice = {"index": i, "finish_reason": _openai_finish_reason(out)}
        if kind == "chat.completion":
            choice["message"] = _chat_message(out.text, tools)
            choice["finish_reason"] = _openai_finish_reason(out, "tool_calls" in choice["message"])
            choice["logprobs"] = _chat_logprobs(out, tokenizer)
        else:
            choice["text"] = (echoes[i] if echoes else "") + out.text
            choice["logprobs"] = _completion_logprobs(out, tokenizer)
        choices.append(choice)
    return {"id": response_id, "object": kind, "created": int(time.time()), "model": model,
            "choices": choices, "usage": _usage(finals, n)}


def _chat_message(text: str, tools: ToolPlan | None) -> dict:
    if tools is None:
        return {"role": "assistant", "content": text}
    content, calls = parse_reply(text, tools.names, tools.max_calls)
    return {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}


def _openai_finish_reason(out: RequestOutput, has_tool_calls: bool = False) -> str:
    if out.finish_reason == "length":
        return "length"
    return "tool_calls" if has_tool_calls else "stop"


def _usage(finals: list[RequestOutput], n: int) -> dict:
    """Each prompt counted once (its n choices share it), as OpenAI counts a list of prompts."""
    prompt = sum(len(out.prompt_token_ids) for out in finals[::n])
    completion = sum(len(o.token_ids) for o in finals)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_logprobs(out: RequestOutput, tokenizer) -> dict | None:
    if out.logprobs is None:
        return None
    text = _token_text(tokenizer)
    content = [{"token": text(token), "logprob": lp.logprob,
                "top_logprobs": [{"token": text(t), "logprob": v} for t, v in lp.top]}
               for token, lp in zip(out.token_ids, out.logprobs)]
    return {"content": content}


def _completion_logprobs(out: RequestOutput, tokenizer) -> dict | None:
    if out.logprobs is None:
        return None
    text = _token_text(tokenizer)
    return {"tokens": [text(t) for t in out.token_ids], "token_logprobs": [lp.logprob for lp in out.logprobs],
            "top_logprobs": [{text(t): v for t, v in lp.top} for lp in out.logprobs]}


def _token_text(tokenizer):
    return lambda token_id: tokenizer.decode([token_id], clean_up_tokenization_spaces=False)


async def last_output(stream, clock: Clock) -> RequestOutput:
    last = None
    async for output in stream:
        clock.saw(output)
        last = output
    return last


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
