"""Zero-shot classification by label verbalizers: a classify task without a trained head asks
the language model itself. When every label's answer is one token (" positive", " sports"), one
`score` row on the prompt reads all of them from its last position: one row, one step. Otherwise
the prompt (instruction + the text + an answer prefix) is prefilled once and each label's
verbalizer is a `score` request on prompt + verbalizer that starts after the first one has
computed the prompt (`after=`), so it reuses the prompt's cached blocks and computes only its own
few tokens. The label probabilities are a softmax over the scores.

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

# Picked by trying prompts on 12 labelled sentences (4 positive, 4 negative, 4 neutral) with the
# default model, SmolLM2-135M-Instruct, float32: this one got 8/12 (every positive and negative
# right, the neutrals called negative or positive); a plain "Which word describes this text best"
# question got 4/12 and "Classify the text as one of ..." 4/12 (every text one label). Contextual
# calibration (dividing by the label probabilities for "N/A") did not help this prompt (8/12).
DEFAULT_INSTRUCTION = "Read the text and pick the best label.\nLabels: {labels}\nText: {input}"
ANSWER_PREFIX = "Label:"  # the assistant's reply starts with it; verbalizers follow after a space


@dataclass(slots=True)
class ZeroShotPlan:
    """The requests that classify one text: a shared prompt and one continuation per label."""

    task: str  # the task's name (metrics)
    labels: list[str]  # in the task's order; probabilities come back in it
    prompt_token_ids: list[int]  # instruction + text + answer prefix, prefilled once
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


def build_plan(spec: TaskSpec, tokenizer, text: str, use_chat_template: bool = True) -> ZeroShotPlan:
    """The prompt from the task's template (or the default instruction) and each label's
    verbalizer tokens. A verbalizer is tokenized as it follows the prompt (" positive" after
    "Label:"), so its first token carries the word boundary the model would produce."""
    if not spec.is_zero_shot:
        raise ValueError(f"task {spec.name!r} is not zero-shot (kind {spec.kind!r}, head {spec.head!r})")
    if not text:
        raise ValueError("text is empty: zero-shot classification needs something to classify")
    labels = ", ".join(spec.verbalizer(label).strip() for label in spec.labels)
    instruction = (spec.render(text) if spec.prompt_template is not None
                   else DEFAULT_INSTRUCTION.format(labels=labels, input=text))
    prefix = _with_chat_template(tokenizer, instruction) if use_chat_template else instruction + "\n"
    prefix += ANSWER_PREFIX
    prompt_ids = _encode(tokenizer, prefix)
    sep = "" if prefix[-1].isspace() else " "  # a word after "Label:" starts with a space, after "\n" not
    continuations = [_continuation(tokenizer, prefix, prompt_ids, sep + spec.verbalizer(label).strip())
                     for label in spec.labels]
    return ZeroShotPlan(spec.name, list(spec.labels), prompt_ids, continuations)


def _with_chat_template(tokenizer, instruction: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        return instruction + "\n"
    return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True,
                                         tokenize=False)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _continuation(tokenizer, prefix: str, prefix_ids: list[int], verbalizer: str) -> list[int]:
    """The tokens `verbalizer` adds after `prefix`: the joint tokenization's tail when the prefix's
    tokens survive unchanged (the usual case: the verbalizer starts a new word), else its own."""
    joint = _encode(tokenizer, prefix + verbalizer)
    if joint[: len(prefix_ids)] == prefix_ids and len(joint) > len(prefix_ids):
        return joint[len(prefix_ids):]
    return _encode(tokenizer, verbalizer)


def classify(engine, spec: TaskSpec, texts: list[str]) -> list[dict[str, float]]:
    """Offline: run every text's label rows on an Engine (stepping it) -> label probabilities."""
    plans = [build_plan(spec, engine.tokenizer, text) for text in texts]
    req_ids: list[list[str]] = []
    for plan in plans:
        ids: list[str] = []
        for prompt, params in plan.requests():  # the first label's row computes the prompt
            ids.append(engine.add_request(prompt, params, task=spec.name, after=ids[0] if ids else None))
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
            raise RuntimeError(f"zero-shot row {out.req_id} ended without a score: {out.finish_reason} {out.error or ''}")
    return plan.probabilities(plan.scores([out.pooled for out in finals]))


async def _last(stream):
    last = None
    async for out in stream:
        last = out
    return last
