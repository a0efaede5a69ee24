"""POST /v1/completions and /v1/chat/completions.

`model` is a generative backbone or a generate task: a task's prompt template wraps the prompt
(chat: the last user message), its adapter applies to its rows and its `sampling` defaults fill the
fields the request leaves unset. A request with n choices becomes n engine requests with the same
prompt: the first one's prefill fills the prefix cache and the others, queued `after` it, reuse those
blocks. Streaming interleaves the choices' chunks as they come; usage closes every response.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from polyhead.engine.core.outputs import RequestOutput
from polyhead.engine.core.params import SamplingParams
from polyhead.engine.decoder.grammar import GRAMMAR_ERROR_PREFIX
from polyhead.server.errors import APIError, deadline_error, error_chunk, exception_chunk
from polyhead.server.offload import input_size, tokenize_off_loop
from polyhead.server.protocol import ChatCompletionRequest, CompletionRequest, new_id
from polyhead.server.tool_parser import ToolCallStream, parse_reply
from polyhead.server.tools import ToolPlan, chat_messages

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request):
    state = request.app.state.server
    served = state.resolve_generate(body.model)
    prompt = body.prompt
    if served.task is not None and isinstance(prompt, str):
        prompt = served.task.spec.render(prompt)
    params = [_params(state, served, body, body.logprobs, i) for i in range(body.n)]
    return await _respond(state, served, request, body, prompt, params, "text_completion", new_id("cmpl"))


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    state = request.app.state.server
    served = state.resolve_generate(body.model)
    if body.max_completion_tokens is not None:
        body.max_tokens = body.max_completion_tokens
    tools = ToolPlan.from_request(body.tools, body.tool_choice, body.parallel_tool_calls)
    messages = [m.model_dump() for m in body.messages]
    if served.task is not None:
        messages = _apply_task_template(served.task.spec, messages)
    messages, template_tools = chat_messages(messages, tools, served.backbone.tokenizer)
    try:
        prompt = await tokenize_off_loop(input_size([messages, template_tools]), apply_chat_template,
                                         served.backbone.tokenizer, messages, template_tools)
    except (ValueError, jinja2.TemplateError) as err:  # a template may refuse a conversation (raise_exception)
        raise APIError(400, str(err), "messages") from err
    params = [tools.constrain(_params(state, served, body, body.chat_logprobs(), i)) for i in range(body.n)]
    return await _respond(state, served, request, body, prompt, params, "chat.completion", new_id("chatcmpl"),
                          tools if tools.is_calling else None)


def apply_chat_template(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model has no chat template; use /v1/completions")
    ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _apply_task_template(spec, messages: list[dict]) -> list[dict]:
    """The task's template wraps the last user message; earlier turns stay as they were."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        raise APIError(400, f"task {spec.name!r} needs a user message to apply its template to", "messages")
    messages = [dict(m) for m in messages]
    messages[last]["content"] = spec.render(messages[last]["content"])
    return messages


def _params(state, served, body, logprobs: int | None, index: int) -> SamplingParams:
    if served.task is not None and served.task.spec.sampling:  # the task's defaults, where the body is silent
        body = body.model_copy(update={k: v for k, v in served.task.spec.sampling.items()
                                       if k not in body.model_fields_set})
    try:
        params = body.sampling_params(state.default_max_tokens, logprobs, index)
    except ValueError as err:
        raise APIError(400, str(err), str(err).split(" ", 1)[0].split(".", 1)[0]) from err
    if served.task is not None and served.task.structured is not None and not body.asks_structure:
        params.structured = served.task.structured  # the task's own response_format
    return params


async def _respond(state, served, request, body, prompt, params: list[SamplingParams], kind: str, response_id: str,
                   tools: ToolPlan | None = None):
    """`tools`: the reply is read for tool calls (chat, when the model may call one)."""
    param = "prompt" if kind == "text_completion" else "messages"
    engine = served.engine
    task = served.task_name or ("chat" if kind == "chat.completion" else "completion")
    routing = {**state.routing(request, body), "task": served.task_name, "adapter": served.adapter}
    try:  # the first choice computes the prompt; the others start once its blocks are prefix-cache hits
        tracked = await tokenize_off_loop(input_size(prompt) * len(params), lambda: [
            engine.prepare(prompt, p, f"{response_id}-{i}", **routing, after=f"{response_id}-0" if i else None)
            for i, p in enumerate(params)])
    except ValueError as err:
        raise APIError(400, str(err), param) from err
    try:
        engine.check_fits(tracked[0].num_prompt_tokens, params[0].max_tokens)
    except ValueError as err:
        raise APIError(400, str(err), param, "context_length_exceeded") from err
    state.admit(len(tracked), tracked[0].num_prompt_tokens)  # 429 when the queue is full
    timeout = state.timeout_for(body.timeout)
    streams = [engine.stream(item) for item in tracked]
    clock = _Clock(task, state.metrics)
    if body.stream:
        return _EventStream(_sse(streams, body, kind, response_id, timeout, clock, tools), streams, clock)
    tasks = [asyncio.ensure_future(_last(s, clock)) for s in streams]
    try:
        async with asyncio.timeout(timeout):
            finals = await asyncio.gather(*tasks)
    except TimeoutError:
        clock.done("timeout", 0)
        raise deadline_error(timeout) from None
    finally:  # a timeout, a failed choice or a disconnect: free whatever still runs
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            stream.close()
    if any(out.finish_reason == "timeout" for out in finals):  # the engine's deadline, the same one
        clock.done("timeout", 0)
        raise deadline_error(timeout)
    failed = next((out for out in finals if out.finish_reason == "error"), None)
    if failed is not None:
        clock.done("error", 0)
        grammar_error = _grammar_error(failed, body)
        if grammar_error is not None:
            raise grammar_error
        raise APIError(500, failed.error or "the engine failed on this request", None, "engine_error")
    response = _full_response(finals, body.model, kind, response_id, state.tokenizer, tools)
    clock.done("ok", response["usage"]["completion_tokens"])
    return JSONResponse(response)


def _grammar_error(failed: RequestOutput, body) -> APIError | None:
    """A 400 naming the field when the engine failed a choice because of its grammar (one of
    llguidance's limits, met while generating): the client's input, not the engine, is at fault."""
    if not (failed.error or "").startswith(GRAMMAR_ERROR_PREFIX):
        return None
    field = "response_format" if body.structured_outputs is None else "structured_outputs"
    return APIError(400, field + failed.error.removeprefix(GRAMMAR_ERROR_PREFIX), field, "invalid_grammar")


class _EventStream(StreamingResponse):
    """The SSE response, which closes its engine streams however it ends: the client may leave
    before the body's generator first runs, and then the generator's own cleanup never does."""

    def __init__(self, events: AsyncIterator[str], streams: list, clock: "_Clock"):
        super().__init__(events, media_type="text/event-stream")
        self.streams, self.clock = streams, clock

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # runs _sse's cleanup now if it is paused at a yield
            for stream in self.streams:
                stream.close()
            self.clock.done("aborted", 0)  # if nothing was recorded yet


class _Clock:
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


async def _sse(streams, body, kind: str, response_id: str, timeout: float, clock: _Clock,
               tools: ToolPlan | None) -> AsyncIterator[str]:
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
                grammar_error = _grammar_error(output, body)
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
                          "choices": [], "usage": _usage(list(finals.values()))})
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


def _full_response(finals: list[RequestOutput], model: str, kind: str, response_id: str, tokenizer,
                   tools: ToolPlan | None) -> dict:
    choices = []
    for i, out in enumerate(finals):
        choice = {"index": i, "finish_reason": _openai_finish_reason(out)}
        if kind == "chat.completion":
            choice["message"] = _chat_message(out.text, tools)
            choice["finish_reason"] = _openai_finish_reason(out, "tool_calls" in choice["message"])
            choice["logprobs"] = _chat_logprobs(out, tokenizer)
        else:
            choice["text"] = out.text
            choice["logprobs"] = _completion_logprobs(out, tokenizer)
        choices.append(choice)
    return {"id": response_id, "object": kind, "created": int(time.time()), "model": model,
            "choices": choices, "usage": _usage(finals)}


def _chat_message(text: str, tools: ToolPlan | None) -> dict:
    if tools is None:
        return {"role": "assistant", "content": text}
    content, calls = parse_reply(text, tools.names, tools.max_calls)
    return {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}


def _openai_finish_reason(out: RequestOutput, has_tool_calls: bool = False) -> str:
    if out.finish_reason == "length":
        return "length"
    return "tool_calls" if has_tool_calls else "stop"


def _usage(finals: list[RequestOutput]) -> dict:
    prompt = len(finals[0].prompt_token_ids) if finals else 0
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


async def _last(stream, clock: _Clock) -> RequestOutput:
    last = None
    async for output in stream:
        clock.saw(output)
        last = output
    return last


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
