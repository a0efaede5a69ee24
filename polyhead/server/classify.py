"""POST /v1/classify: one input or a list, one task or several (fan-out).

A task with a trained head is one pooling row per input; a zero-shot task (no head) runs the
rows of `zero_shot.build_plan`, the same plan `LLM.classify` runs offline (polyhead/tasks/
zero_shot.py): one score row reading every label's one-token answer after the prompt, or one per
label, and the labels' probabilities from their scores. Rows of one input on one backbone that
start with the same tokens share one prefill (polyhead/server/pooling.py).
"""

from fastapi import APIRouter, Request

from polyhead.engine.core.params import PoolingParams
from polyhead.server.errors import APIError
from polyhead.server.offload import input_size, tokenize_off_loop
from polyhead.server.pooling import PoolingJob, run_jobs
from polyhead.server.protocol import new_id
from polyhead.server.registry import ServedTask
from polyhead.server.task_protocol import ClassifyRequest, LabelScore, UsageInfo
from polyhead.tasks import zero_shot
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
    jobs, spans = [], []  # spans: (input, task, its zero-shot plan or None, the jobs that make its answer)
    size = input_size(inputs)  # many small inputs are one large request
    for index, text in enumerate(inputs):
        for task in tasks:
            first = len(jobs)
            plan = None
            if task.spec.is_zero_shot:
                plan = await tokenize_off_loop(size, zero_shot_plan, task, text)
            jobs += classify_jobs(task, text, plan, group=(index, task.backbone.name))
            spans.append((index, task, plan, first, len(jobs)))
    response_id = new_id("classify")
    routing = state.routing(request, body)
    finals = await run_jobs(state, jobs, routing, state.timeout_for(body.timeout), response_id)
    data = [_answer(index, task, plan, finals[start:end]) for index, task, plan, start, end in spans]
    num_tokens = sum(len(out.prompt_token_ids) for out in finals)
    return {"id": response_id, "object": "list", "model": ",".join(names), "data": [d.model_dump() for d in data],
            "usage": UsageInfo(prompt_tokens=num_tokens, total_tokens=num_tokens).model_dump()}


def zero_shot_plan(task: ServedTask, text: str, param: str = "input") -> ZeroShotPlan:
    try:
        return zero_shot.build_plan(task.spec, task.backbone.tokenizer, text)
    except ValueError as err:
        raise APIError(400, f"{param}: {err}", param) from err


def classify_jobs(task: ServedTask, text: str, plan: ZeroShotPlan | None, group) -> list[PoolingJob]:
    """The rows that classify `text` (already without the task's template) with `task`."""
    spec, backbone = task.spec, task.backbone
    if plan is None:
        params = PoolingParams(kind="classify", task=spec.name, pooling=spec.pooling)
        return [PoolingJob(backbone, spec.render(text), params, spec.name, task.adapter, group)]
    return [PoolingJob(backbone, ids, params, spec.name, task.adapter, group) for ids, params in plan.requests()]


def label_probabilities(task: ServedTask, plan: ZeroShotPlan | None, outputs: list) -> list[float]:
    """Every label's probability, in the task's label order, from the outputs of classify_jobs' rows."""
    if plan is not None:  # the rows' scores -> probabilities over the labels
        by_label = plan.probabilities(plan.scores([out.pooled for out in outputs]))
        return [by_label[label] for label in task.spec.labels]
    return [float(p) for p in outputs[0].pooled]


def _answer(index: int, task: ServedTask, plan: ZeroShotPlan | None, outputs: list) -> LabelScore:
    labels = list(task.spec.labels)
    probs = label_probabilities(task, plan, outputs)
    best = max(range(len(labels)), key=probs.__getitem__)
    return LabelScore(index=index, task=task.name, label=labels[best], score=probs[best], probs=probs, labels=labels)
