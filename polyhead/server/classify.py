"""POST /v1/classify: one input or a list, one task or several (fan-out).

A task with a trained head is one pooling row per input; a zero-shot task (no head) is one score
row reading every label's one-token answer after the prompt, or (longer answers) one score row
per label, each the prompt followed by that label's answer tokens; the labels' probabilities are
the softmax of the answers' mean log-probability per token (polyhead/tasks/zero_shot.py). Every
row of one input on one backbone starts with the same tokens, so they share one prefill
(polyhead/server/pooling.py).
"""

from fastapi import APIRouter, Request

from polyhead.engine.core.params import PoolingParams
from polyhead.server.errors import APIError
from polyhead.server.pooling import PoolingJob, run_jobs
from polyhead.server.protocol import new_id
from polyhead.server.registry import ServedTask
from polyhead.server.task_protocol import ClassifyRequest, LabelScore, UsageInfo
from polyhead.tasks.zero_shot import ZeroShotPlan

router = APIRouter()


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request):
    state = request.app.state.server
    try:
        names = body.task_names()
    except ValueError as err:
        raise APIError(400, str(err), "task") from err
    tasks = [state.task(name, "/v1/classify", "tasks" if body.tasks else "task") for name in names]
    inputs = state.inputs(body.input)
    jobs, spans = [], []  # spans[(input, task)] = the jobs that make its answer
    for index, text in enumerate(inputs):
        for task in tasks:
            first = len(jobs)
            jobs += _jobs(task, text, group=(index, task.backbone.name))
            spans.append((index, task, first, len(jobs)))
    response_id = new_id("classify")
    routing = state.routing(request, body)
    finals = await run_jobs(state, jobs, routing, state.timeout_for(body.timeout), response_id)
    data = [_answer(index, task, finals[start:end]) for index, task, start, end in spans]
    num_tokens = sum(len(out.prompt_token_ids) for out in finals)
    return {"id": response_id, "object": "list", "model": ",".join(names), "data": [d.model_dump() for d in data],
            "usage": UsageInfo(prompt_tokens=num_tokens, total_tokens=num_tokens).model_dump()}


def _jobs(task: ServedTask, text: str, group) -> list[PoolingJob]:
    spec, backbone = task.spec, task.backbone
    prompt = spec.render(text)
    if not spec.is_zero_shot:
        params = PoolingParams(kind="classify", task=spec.name, pooling=spec.pooling)
        return [PoolingJob(backbone, prompt, params, spec.name, task.adapter, group)]
    plan = _plan(task, backbone.tokenizer.encode(prompt, add_special_tokens=False))
    return [PoolingJob(backbone, ids, params, spec.name, task.adapter, group) for ids, params in plan.requests()]


def _plan(task: ServedTask, prompt_ids: list[int]) -> ZeroShotPlan:
    return ZeroShotPlan(task.name, list(task.spec.labels), prompt_ids, list(task.verbalizer_ids.values()))


def _answer(index: int, task: ServedTask, outputs: list) -> LabelScore:
    labels = list(task.spec.labels)
    if task.spec.is_zero_shot:  # one summed log-prob per label -> probabilities over the labels
        plan = _plan(task, [])
        by_label = plan.probabilities(plan.scores([out.pooled for out in outputs]))
        probs = [by_label[label] for label in labels]
    else:
        probs = [float(p) for p in outputs[0].pooled]
    best = max(range(len(labels)), key=probs.__getitem__)
    return LabelScore(index=index, task=task.name, label=labels[best], score=probs[best], probs=probs, labels=labels)
