"""POST /tokenize, POST /detokenize and GET /version, in vLLM's shapes, so tools written for vLLM
(token counters, UIs, benchmark clients) work unchanged.

/tokenize takes a completions-style `prompt` or a chat-style `messages` and answers the token ids
the engine would see: a generate task's prompt template is applied, as /v1/completions and
/v1/chat/completions apply it, and special tokens are added as the backbone adds them to a prompt
(none for a causal LM, whose chat template holds its own) unless `add_special_tokens` says otherwise.
"""

from fastapi import APIRouter, Request
from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

import polyhead
from polyhead.server.completions import apply_chat_template, apply_task_template
from polyhead.server.errors import APIError
from polyhead.server.offload import input_size, tokenize_off_loop
from polyhead.server.protocol import ChatMessage, RequestBody

router = APIRouter()


class TokenizeRequest(RequestBody):
    model: str | None = None  # None: the default model
    prompt: str | None = None  # completions style: text, as /v1/completions takes it
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)  # chat style
    add_generation_prompt: bool = True  # chat: end with the assistant's turn opening, as chat requests do
    add_special_tokens: bool | None = None  # None: as the backbone tokenizes a prompt
    return_token_strs: bool = False  # also each token's text

    @model_validator(mode="after")
    def _prompt_or_messages(self):
        if (self.prompt is None) == (self.messages is None):
            raise PydanticCustomError("prompt_or_messages", "send either prompt or messages (one of them)")
        return self


class DetokenizeRequest(RequestBody):
    model: str | None = None
    tokens: list[int]


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    state = request.app.state.server
    backbone, task = _resolve(state, body.model)
    tokenizer = backbone.tokenizer
    if body.messages is not None:
        messages = [m.template_dict() for m in body.messages]
        if task is not None:
            messages = apply_task_template(task.spec, messages)
        try:
            tokens = await tokenize_off_loop(input_size(messages), apply_chat_template, tokenizer, messages,
                                             add_generation_prompt=body.add_generation_prompt)
        except ValueError as err:
            raise APIError(400, str(err), "messages") from err
    else:
        prompt = task.spec.render(body.prompt) if task is not None else body.prompt
        add_special = backbone.add_special_tokens if body.add_special_tokens is None else body.add_special_tokens
        tokens = await tokenize_off_loop(len(prompt), tokenizer.encode, prompt, add_special_tokens=add_special)
    response = {"count": len(tokens), "max_model_len": backbone.engine.rules.max_model_len, "tokens": tokens,
                "token_strs": None}
    if body.return_token_strs:
        response["token_strs"] = tokenizer.convert_ids_to_tokens(tokens)
    return response


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    tokenizer = _resolve(request.app.state.server, body.model)[0].tokenizer
    vocab = len(tokenizer)
    bad = next((i for i, token in enumerate(body.tokens) if not 0 <= token < vocab), None)
    if bad is not None:
        raise APIError(400, f"tokens[{bad}] is {body.tokens[bad]}; token ids must be in [0, {vocab}) (the "
                       "tokenizer's vocabulary)", "tokens", "invalid_value")
    text = await tokenize_off_loop(len(body.tokens), tokenizer.decode, body.tokens, clean_up_tokenization_spaces=False)
    return {"prompt": text}


def _resolve(state, name: str | None):
    """`model` -> (its backbone, the generate task whose template applies or None): any backbone,
    an encoder's too, any task, or a --lora-modules adapter; None is the default model."""
    backbone = state.backbone_named(name or state.settings.model_names[0])
    if backbone is not None:
        return backbone, None
    task = state.registry.tasks.get(name)
    if task is not None:
        return task.backbone, task if task.kind == "generate" else None
    served = state.resolve_generate(name)  # an adapter, else the 404 that lists the names
    return served.backbone, served.task


@router.get("/version")
async def version():
    return {"version": polyhead.__version__}
