"""POST /v1/tag: entity spans from a tag task's per-token BIO probabilities.

The input is tokenized here (not in the engine) so every token's character offsets are known.
A word split into several tokens takes its first token's tag; consecutive words tagged B-X, I-X,
I-X... form one span of type X (an I-X after something else opens a span too, as Hugging Face's
"simple" aggregation does); a span's score is the mean probability of its tokens' tags.
"""

from fastapi import APIRouter, Request

from polyhead.engine.core.params import PoolingParams
from polyhead.server.errors import APIError
from polyhead.server.offload import input_size, tokenize_off_loop
from polyhead.server.pooling import PoolingJob, run_jobs
from polyhead.server.protocol import new_id
from polyhead.server.registry import ServedTask
from polyhead.server.task_protocol import Entity, TagRequest, TagResult, UsageInfo

router = APIRouter()


@router.post("/v1/tag")
async def tag(body: TagRequest, request: Request):
    state = request.app.state.server
    try:
        name = body.task_name()
    except ValueError as err:
        raise APIError(400, str(err), "task") from err
    task = state.task(name, "/v1/tag")
    inputs = state.inputs(body.input)
    encodings = await tokenize_off_loop(input_size(inputs), lambda: [_encode(task, text) for text in inputs])
    params = PoolingParams(kind="tag", task=task.name)
    jobs = [PoolingJob(task.backbone, enc["input_ids"], params, task.name, task.adapter, group=i)
            for i, enc in enumerate(encodings)]
    response_id = new_id("tag")
    finals = await run_jobs(state, jobs, state.routing(request, body),
                            state.timeout_for(body.timeout), response_id)
    data = [TagResult(index=i, entities=entity_spans(text, enc, out.pooled, task.spec.labels))
            for i, (text, enc, out) in enumerate(zip(inputs, encodings, finals))]
    num_tokens = sum(len(out.prompt_token_ids) for out in finals)
    return {"id": response_id, "object": "list", "model": task.name, "data": [d.model_dump() for d in data],
            "usage": UsageInfo(prompt_tokens=num_tokens, total_tokens=num_tokens).model_dump()}


def _encode(task: ServedTask, text: str) -> dict:
    """Token ids, and per token its word and its character span within `text` (None outside it)."""
    template = task.spec.prompt_template
    offset = 0 if template is None else template.index("{input}")
    encoding = task.backbone.tokenizer(task.spec.render(text), add_special_tokens=task.backbone.add_special_tokens,
                                       return_offsets_mapping=True)
    spans = []
    for start, end in encoding["offset_mapping"]:
        start, end = start - offset, end - offset
        spans.append((start, end) if 0 <= start < end <= len(text) else None)  # specials and template: None
    return {"input_ids": list(encoding["input_ids"]), "spans": spans, "word_ids": encoding.word_ids()}


def entity_spans(text: str, encoding: dict, probs: list[list[float]], labels: list[str]) -> list[Entity]:
    """probs: [tokens][labels], the tag head's probabilities for every prompt token."""
    words: list[dict] = []  # {"tag", "start", "end", "scores"}, in order
    last_word = None
    for i, span in enumerate(encoding["spans"]):
        if span is None:
            last_word = None
            continue
        row = probs[i]
        best = max(range(len(labels)), key=row.__getitem__)
        word_id = encoding["word_ids"][i]
        if words and word_id is not None and word_id == last_word:  # a later piece of the same word
            words[-1]["end"] = span[1]
            words[-1]["scores"].append(row[labels.index(words[-1]["tag"])])
        else:
            words.append({"tag": labels[best], "start": span[0], "end": span[1], "scores": [row[best]]})
        last_word = word_id
    entities: list[dict] = []
    open_span = None
    for word in words:
        prefix, _, kind = word["tag"].partition("-") if "-" in word["tag"] else ("I", "", word["tag"])
        if word["tag"] == "O" or not kind:
            open_span = None
            continue
        if prefix == "B" or open_span is None or open_span["label"] != kind:
            open_span = {"label": kind, "start": word["start"], "end": word["end"], "scores": list(word["scores"])}
            entities.append(open_span)
        else:
            open_span["end"] = word["end"]
            open_span["scores"] += word["scores"]
    out = []
    for span in entities:
        start, end = span["start"], span["end"]
        while start < end and text[start].isspace():  # byte-level tokens carry their leading space
            start += 1
        out.append(Entity(label=span["label"], text=text[start:end], start=start, end=end,
                          score=sum(span["scores"]) / len(span["scores"])))
    return out
