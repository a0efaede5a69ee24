"""Zero-shot classification by label verbalizers: a classify task without a trained head asks
the language model itself. This module is the one plan for it: `LLM.classify` and `/v1/classify`
(either engine mode) both call `build_plan` and run what it returns.

The prompt is the task's template as written (a task without one gets the default instruction
ending in "Label:"), with no chat template around it, and each label's verbalizer is tokenized as
it follows that prompt. That won on the example test splits: 0.63 mean accuracy over four tasks
against 0.42 for the chat template with a "Label:" reply (scripts/zero_shot_eval.py,
BENCHMARKS.md); few-shot templates ("Text: ...\nSentiment:") are plain-text patterns the model
continues, and a chat turn around them breaks the pattern. The prompt is also exactly what a
headed classify task on the same text runs, so a fan-out shares one prefill across both.

When every label's answer is one token (" positive", " sports"), one `score` row on the prompt
reads all of them from its last position: one row, one step. Otherwise each label's verbalizer is
a `score` request on prompt + verbalizer that starts after the first one has computed the prompt
(`after=`), so it reuses the prompt's cached blocks and computes only its own few tokens. The
label probabilities are a softmax over the scores.

Scores are length-normalized: each label's score is the mean log-probability of its verbalizer's
tokens, not the sum. With the sum, a label whose verbalizer tokenizes into more pieces pays for
every piece and loses to a one-token label however sure the model is; the mean puts labels of
different token counts on the same per-token scale (for one-token verbalizers the two agree).
"""

import asyncio
import math
from dataclasses import dataclass

from polyhead.engine.core.params import PoolingParams
from polyhead.tasks.spec import TaskSpec

# For tasks without a prompt_template. Picked (inside the chat template, since dropped) by trying
# prompts on 12 labelled sentences with the default model, SmolLM2-135M-Instruct: 8/12, against
# 4/12 for "Which word describes this text best" and "Classify the text as one of ...". As plain
# text it gets 0.58 (sentiment) and 0.53 (topic) on the example test splits (BENCHMARKS.md).
DEFAULT_INSTRUCTION = "Read the text and pick the best label.\nLabels: {labels}\nText: {input}"
ANSWER_PREFIX = "Label:"  # ends the default instruction's prompt; verbalizers follow after a space


@dataclass(slots=True)
class ZeroShotPlan:
    """The requests that classify one text: a shared prompt and one continuation per label."""

    task: str  # the task's name (metrics)
    labels: list[str]  # in the task's order; probabilities come back in it
    prompt_token_ids: list[int]  # the rendered template (or default instruction), prefilled once
    continuations: list[list[int]]  # per label: its verbalizer's tokens as they follow the prompt

    @property
    def is_one_row(self) -> bool:
        """Every answer is one token: the prompt's last position scores them all."""
        return all(len(cont) == 1 for cont in self.continuations)

    def requests(self) -> list[tuple[list[int], PoolingParams]]:
        """(prompt tokens, params) of each row: the prompt with every one-token answer as a candidate
        next token, else one row per label scoring its verbalizer's tokens after the prompt."""
        if self.is_one_row:
            answers = tuple(cont[0] for cont in self.continuations)
            return [(list(self.prompt_token_ids), PoolingParams("score", task=self.task, next_token_ids=answers))]
        return [(self.prompt_token_ids + cont, PoolingParams("score", task=self.task, num_scored_tokens=len(cont)))
                for cont in self.continuations]

    def scores(self, pooled: list) -> list[float]:
        """The rows' results (RequestOutput.pooled, in requests() order) -> each label's summed log-prob."""
        return [float(x) for x in pooled[0]] if self.is_one_row else [float(x) for x in pooled]

    def probabilities(self, scores: list[float]) -> dict[str, float]:
        """scores: each label's summed log-prob (RequestOutput.pooled) -> label -> probability."""
        normalized = [s / len(c) for s, c in zip(scores, self.continuations)]  # mean log-prob per token
        top = max(normalized)
        weights = [math.exp(s - top) for s in normalized]
        total = sum(weights)
        return {label: w / total for label, w in zip(self.labels, weights)}


def build_plan(spec: TaskSpec, tokenizer, text: str) -> ZeroShotPlan:
    """The prompt (the task's template as written, else the default instruction and "Label:") and
    each label's verbalizer tokens. A verbalizer is tokenized as it follows the prompt (" positive"
    after "Sentiment:"), so its first token carries the word boundary the model would produce."""
    if not spec.is_zero_shot:
        raise ValueError(f"task {spec.name!r} is not zero-shot (kind {spec.kind!r}, head {spec.head!r})")
    if not text:
        raise ValueError("text is empty: zero-shot classification needs something to classify")
    if spec.prompt_template is not None:
        prefix = spec.render(text)
    else:
        labels = ", ".join(spec.verbalizer(label).strip() for label in spec.labels)
        prefix = DEFAULT_INSTRUCTION.format(labels=labels, input=text) + "\n" + ANSWER_PREFIX
    prompt_ids = _encode(tokenizer, prefix)
    sep = "" if prefix[-1].isspace() else " "  # a word after "Label:" starts with a space, after "\n" not
    continuations = [_continuation(tokenizer, prefix, prompt_ids, sep + spec.verbalizer(label).strip())
                     for label in spec.labels]
    return ZeroShotPlan(spec.name, list(spec.labels), prompt_ids, continuations)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _continuation(tokenizer, prefix: str, prefix_ids: list[int], verbalizer: str) -> list[int]:
    """The tokens `verbalizer` adds after `prefix`: the joint tokenization's tail when the prefix's
    tokens survive unchanged (the usual case: the verbalizer starts a new word), else its own."""
    joint = _encode(tokenizer, prefix + verbalizer)
    if joint[: len(prefix_ids)] == prefix_ids and len(joint) > len(prefix_ids):
        return joint[len(prefix_ids):]
    return _encode(tokenizer, verbalizer)


def classify(engine, plans: list[ZeroShotPlan]) -> list[dict[str, float]]:
    """Offline: run every plan's rows on an Engine (stepping it) -> label probabilities per plan."""
    req_ids: list[list[str]] = []
    for plan in plans:
        ids: list[str] = []
        for prompt, params in plan.requests():  # the first label's row computes the prompt
            ids.append(engine.add_request(prompt, params, task=plan.task, after=ids[0] if ids else None))
        req_ids.append(ids)
    wanted = {i for ids in req_ids for i in ids}
    scores: dict[str, float] = {}
    while wanted - set(scores):
        for out in engine.step():
            if out.finished and out.req_id in wanted:
                if out.pooled is None:
                    raise RuntimeError(f"zero-shot row {out.req_id} ended without a score: "
                                       f"{out.finish_reason} {out.error or ''}")
                scores[out.req_id] = out.pooled
    return [plan.probabilities(plan.scores([scores[i] for i in ids])) for plan, ids in zip(plans, req_ids)]


async def classify_async(async_engine, spec: TaskSpec, text: str, req_id: str, **routing) -> dict[str, float]:
    """Serving: the label rows of one text on an AsyncEngine; the first computes the prompt, the
    others start after it (prefix-cache hits). `routing`: priority, tenant, deadline, adapter."""
    plan = build_plan(spec, async_engine.tokenizer, text)
    streams = []
    for i, (prompt, params) in enumerate(plan.requests()):
        tracked = async_engine.prepare(prompt, params, f"{req_id}-{i}", task=spec.name,
                                       after=f"{req_id}-0" if i else None, **routing)
        streams.append(async_engine.stream(tracked))
    finals = await asyncio.gather(*(_last(stream) for stream in streams))
    for out in finals:
        if out.pooled is None:
            raise RuntimeError(f"zero-shot row {out.req_id} ended without a score: "
                               f"{out.finish_reason} {out.error or ''}")
    return plan.probabilities(plan.scores([out.pooled for out in finals]))


async def _last(stream):
    last = None
    async for out in stream:
        last = out
    return last
