"""POST /v1/completions and /v1/chat/completions.

`model` is a generative backbone or a generate task: a task's prompt template wraps the prompt
(chat: the last user message), its adapter applies to its rows and its `sampling` defaults fill the
fields the request leaves unset. A request with n choices becomes n engine requests with the same
prompt: the first one's prefill fills the prefix cache and the others, queued `after` it, reuse those
blocks. Streaming interleaves the choices' chunks as they come; usage closes every response.
"""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from jinja2 import TemplateError

from polyhead.engine.core.params import SamplingParams
from polyhead.server.completion_replies import (
    Clock,
    EventStream,
    full_response,
    grammar_refusal,
    last_output,
    sse_events,
)
from polyhead.server.errors import APIError, deadline_error
from polyhead.server.offload import input_size, tokenize_off_loop
from polyhead.server.protocol import ChatCompletionRequest, CompletionRequest, new_id
from polyhead.server.tools import ToolPlan, chat_messages

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request):
    body.check_supported()
    state = request.app.state.server
    served = state.resolve_generate(body.model)
    prompts = completion_prompts(body.prompt, state.settings.max_inputs_per_request)
    if served.task is not None:
        prompts = [served.task.spec.render(p) if isinstance(p, str) else p for p in prompts]
    params = [_params(state, served, body, body.logprobs, i) for i in range(body.n)]
    echoes = [_prompt_text(p, served.backbone) for p in prompts] if body.echo else None
    return await _respond(state, served, request, body, prompts, params, "text_completion", new_id("cmpl"), echoes)


def completion_prompts(prompt: str | list, limit: int) -> list[str | list[int]]:
    """The `prompt` field as a list of prompts: one text, one token list, or a list of either."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt is an empty list: send at least one prompt", "prompt", "empty_input")
    if len(prompt) > limit:
        raise APIError(413, f"prompt has {len(prompt)} prompts; the limit is {limit} per request "
                       "(max_inputs_per_request)", "prompt", "too_many_inputs")
    return list(prompt)


def _prompt_text(prompt: str | list[int], backbone) -> str:
    """The prompt as text, for `echo` (a token prompt decoded, checked first as the engine would)."""
    if isinstance(prompt, str):
        return prompt
    vocab_size = backbone.engine.rules.vocab_size
    if not all(isinstance(t, int) and 0 <= t < vocab_size for t in prompt):
        raise APIError(400, f"prompt token ids must be integers in [0, {vocab_size}) (vocab_size)", "prompt",
                       "invalid_token_ids")
    return backbone.tokenizer.decode(prompt, clean_up_tokenization_spaces=False)


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    body.check_supported()
    state = request.app.state.server
    served = state.resolve_generate(body.model)
    if body.max_completion_tokens is not None:
        body.max_tokens = body.max_completion_tokens
    tools = ToolPlan.from_request(body.tools, body.tool_choice, body.parallel_tool_calls)
    messages = [m.template_dict() for m in body.messages]
    if served.task is not None:
        messages = apply_task_template(served.task.spec, messages)
    messages, template_tools = chat_messages(messages, tools, served.backbone.tokenizer)
    try:
        prompt = await tokenize_off_loop(input_size([messages, template_tools]), apply_chat_template,
                                         served.backbone.tokenizer, messages, template_tools)
    except ValueError as err:  # apply_chat_template turns a template's refusal (raise_exception) into one
        raise APIError(400, str(err), "messages") from err
    params = [tools.constrain(_params(state, served, body, body.chat_logprobs(), i)) for i in range(body.n)]
    return await _respond(state, served, request, body, [prompt], params, "chat.completion", new_id("chatcmpl"),
                          tools=tools if tools.is_calling else None)


def apply_chat_template(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                        add_generation_prompt: bool = True) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model has no chat template; use /v1/completions")
    try:
        ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                            tokenize=True)
    except TemplateError as err:  # the template refused these messages (e.g. roles out of order)
        raise ValueError(f"the model's chat template refused these messages: {err}") from err
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def apply_task_template(spec, messages: list[dict]) -> list[dict]:
    """The task's template wraps the last user message; earlier turns stay as they were."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        raise APIError(400, f"task {spec.name!r} needs a user message to apply its template to", "messages")
    messages = [dict(m) for m in messages]
    messages[last]["content"] = spec.render(messages[last]["content"])
    return messages


def _params(state, served, body, logprobs: int | None, index: int) -> SamplingParams:
    defaults = state.request_defaults(served)  # the task's and the model's, where the body is silent
    unset = {field: value for field, value in defaults.items() if field not in body.model_fields_set}
    if unset:
        body = body.model_copy(update=unset)
    try:
        params = body.sampling_params(state.default_max_tokens, logprobs, index)
    except ValueError as err:
        raise APIError(400, str(err), str(err).split(" ", 1)[0].split(".", 1)[0]) from err
    if served.task is not None and served.task.structured is not None and not body.asks_structure:
        params.structured = served.task.structured  # the task's own response_format
    return params


async def _respond(state, served, request, body, prompts: list, params: list[SamplingParams], kind: str,
                   response_id: str, echoes: list[str] | None = None, tools: ToolPlan | None = None):
    """n = len(params) choices per prompt, numbered as OpenAI does: choice index = prompt_i * n + j.
    `echoes`: per prompt, text each of its choices starts with (completions' echo), or None.
    `tools`: the reply is read for tool calls (chat, when the model may call one)."""
    param = "prompt" if kind == "text_completion" else "messages"
    engine, n = served.engine, len(params)
    task = served.task_name or ("chat" if kind == "chat.completion" else "completion")
    routing = {**state.routing(request, body), "task": served.task_name, "adapter": served.adapter}
    try:  # a prompt's first choice computes it; the others start once its blocks are prefix-cache hits
        tracked = await tokenize_off_loop(input_size(prompts) * n, lambda: [
            engine.prepare(prompt, p, f"{response_id}-{i * n + j}", **routing,
                           after=f"{response_id}-{i * n}" if j else None)
            for i, prompt in enumerate(prompts) for j, p in enumerate(params)])
    except ValueError as err:  # the backbone's checks name the field first where it is not the prompt
        named = str(err).split(" ", 1)[0]
        raise APIError(400, str(err), named if named in type(body).model_fields else param) from err
    leaders = tracked[::n]  # each prompt's first choice
    try:
        for leader in leaders:
            engine.check_fits(leader.num_prompt_tokens, params[0].max_tokens)
    except ValueError as err:
        raise APIError(400, str(err), param, "context_length_exceeded") from err
    state.admit_total(len(tracked), sum(item.num_prompt_tokens for item in tracked))  # 429 when the queue is full
    timeout = state.timeout_for(body.timeout)
    streams = [engine.stream(item) for item in tracked]
    clock = Clock(task, state.metrics)
    echoes = None if echoes is None else [echo for echo in echoes for _ in range(n)]  # per choice
    if body.stream:
        events = sse_events(streams, body, kind, response_id, timeout, clock, n, echoes, tools)
        return EventStream(events, streams, clock)
    tasks = [asyncio.ensure_future(last_output(s, clock)) for s in streams]
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
        grammar_error = grammar_refusal(failed, body)
        if grammar_error is not None:
            raise grammar_error
        raise APIError(500, failed.error or "the engine failed on this request", None, "engine_error")
    response = full_response(finals, body.model, kind, response_id, served.backbone.tokenizer, n, echoes, tools)
    clock.done("ok", response["usage"]["completion_tokens"])
    return JSONResponse(response)
