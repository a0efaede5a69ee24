"""Per-row heads for pooling requests, applied to the hidden states of the one backbone forward.

The rule it keeps: a pooling request's result depends only on its own tokens' hidden states,
however its prompt was cut into chunks and whatever shares the batch. Each request keeps an
accumulator across chunks (mean: a running float32 sum; cls: the first token's state; tag: each
chunk's probabilities; score: each chunk's log-probs) and gets its result in the step that
computes its last prompt token. A chunk that does not start where the accumulator expects means
the request was preempted and recomputed: its accumulator starts over.
"""

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.engine.core.params import PoolingParams
from polyhead.engine.core.request import Request
from polyhead.models.heads import ClassifyHead, EmbedPooler, TagHead, pool

Pooled = list[float] | list[list[float]] | float
logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PoolingRow:
    """One pooling request's tokens in this step's flat batch."""

    request: Request
    row: int  # index of its first token in the flat batch
    start: int  # position of that token in the request's prompt
    num_new: int  # tokens computed this step

    @property
    def end(self) -> int:
        return self.start + self.num_new

    @property
    def is_last_chunk(self) -> bool:
        return self.end == self.request.num_tokens


@dataclass(slots=True)
class _Accumulator:
    next_position: int  # where the next chunk must start; any other start is a restart
    total: torch.Tensor | None = None  # mean: float32 sum of states [H]; cls: the first state [H]
    parts: list = field(default_factory=list)  # tag: probabilities [n, labels] per chunk; score: 0-d log-prob sums


class Pooler:
    """Holds the registered heads and the accumulators of pooling requests in flight."""

    def __init__(self, hidden_size: int):
        self.hidden_size = hidden_size
        self.heads: dict[str, nn.Module] = {}  # task -> ClassifyHead | TagHead | EmbedPooler
        self._accumulators: dict[str, _Accumulator] = {}  # req_id -> state across chunks

    def register(self, task: str, head: nn.Module) -> None:
        if not isinstance(head, (ClassifyHead, TagHead, EmbedPooler)):
            raise TypeError(f"head for task {task!r} must be a ClassifyHead, TagHead or EmbedPooler, "
                             f"got {type(head).__name__}")
        if isinstance(head, EmbedPooler):
            width = None if head.projection is None else head.projection.shape[1]
        else:
            width = head.linear.in_features
        if width is not None and width != self.hidden_size:
            raise ValueError(f"head for task {task!r} reads hidden size {width}, but the backbone's "
                             f"hidden size is {self.hidden_size}")
        self.heads[task] = head.eval().requires_grad_(False)

    def release(self, req_id: str) -> None:
        """Forget a request's accumulator (it finished, was aborted or was preempted)."""
        self._accumulators.pop(req_id, None)

    def score_inputs(self, rows: list[PoolingRow]) -> tuple[list[int], list[int], list[int]]:
        """For score rows: the flat-batch rows whose LM-head log-probs are needed, the token each
        one predicts, and how many of them belong to each score row (in `rows` order)."""
        hidden_rows, targets, counts = [], [], []
        for item in rows:
            request = item.request
            if request.params.kind != "score":
                continue
            candidates = request.params.next_token_ids
            if candidates:  # every candidate is read from the last state, in the last chunk only
                last = item.row + item.num_new - 1
                num = len(candidates) if item.is_last_chunk else 0
                hidden_rows.extend([last] * num)
                targets.extend(candidates[:num])
                counts.append(num)
                continue
            first = request.params.first_needed_position(request.num_tokens)
            lo, hi = max(item.start, first), min(item.end, request.num_tokens - 1)
            positions = range(lo, hi)  # states at these positions predict tokens lo+1 .. hi
            hidden_rows.extend(item.row + p - item.start for p in positions)
            targets.extend(request.all_token_ids[p + 1] for p in positions)
            counts.append(len(positions))
        return hidden_rows, targets, counts

    def __call__(self, hidden: torch.Tensor, rows: list[PoolingRow], score_logprobs: torch.Tensor | None,
                 score_counts: list[int]) -> tuple[dict[str, Pooled], dict[str, str]]:
        """hidden: [T, H] the step's final-normed states; score_logprobs: [S] float32, the log-prob of
        each scored token (score_inputs' order). Returns req_id -> result for requests that finished,
        and req_id -> why for rows whose head failed (the other rows' results are unaffected)."""
        results: dict[str, Pooled] = {}
        errors: dict[str, str] = {}
        pooled_groups: dict[tuple[str, str | None], list[tuple[Request, torch.Tensor]]] = {}
        score_offset, score_index = 0, 0
        for item in rows:
            request, params = item.request, item.request.params
            scored = None
            if params.kind == "score":  # the offsets advance whatever happens to this row
                count = score_counts[score_index]
                score_index += 1
                scored = score_logprobs[score_offset:score_offset + count] if count else None
                score_offset += count
            try:
                vector = self._accumulate(item, hidden, scored, results)
            except Exception as err:  # noqa: BLE001 - this row fails, the step goes on
                self._fail(request.req_id, err, errors)
                continue
            if vector is not None:
                pooled_groups.setdefault((params.kind, params.task), []).append((request, vector))
        for (kind, task), items in pooled_groups.items():  # one head call per task
            try:
                self._finish_group(kind, task, items, results)
            except Exception:  # noqa: BLE001 - then each row alone, so only the failing ones fail
                for item in items:
                    try:
                        self._finish_group(kind, task, [item], results)
                    except Exception as err:  # noqa: BLE001
                        self._fail(item[0].req_id, err, errors)
        return results, errors

    def _accumulate(self, item: PoolingRow, hidden: torch.Tensor, scored: torch.Tensor | None,
                    results: dict[str, Pooled]) -> torch.Tensor | None:
        """Add this chunk to the request's accumulator; on its last chunk, the result (into `results`)
        or, for classify / embed, the pooled vector [H] float32 its head still has to take."""
        request, params = item.request, item.request.params
        acc = self._accumulator(item)
        states = hidden[item.row:item.row + item.num_new]  # [n, H]
        if params.kind == "score":
            if scored is not None:
                acc.parts.append(scored if params.next_token_ids else scored.sum())
        elif params.kind == "tag":
            acc.parts.append(torch.softmax(self.heads[params.task](states), dim=-1))
        elif params.pooling == "mean":
            chunk_sum = states.float().sum(0)
            acc.total = chunk_sum if acc.total is None else acc.total + chunk_sum
        elif params.pooling == "cls" and item.start == 0:
            acc.total = states[0].float()
        acc.next_position = item.end  # only once the chunk is in: a failed chunk restarts the request
        if not item.is_last_chunk:
            return None
        del self._accumulators[request.req_id]
        if params.kind == "score" and params.next_token_ids:
            results[request.req_id] = acc.parts[-1].tolist()  # one log-prob per candidate
        elif params.kind == "score":
            results[request.req_id] = float(sum(acc.parts)) if acc.parts else 0.0
        elif params.kind == "tag":
            results[request.req_id] = torch.cat(acc.parts).tolist()
        else:
            return _finish_pool(params, acc, states, request.num_tokens)
        return None

    def _finish_group(self, kind: str, task: str | None, items: list[tuple[Request, torch.Tensor]],
                      results: dict[str, Pooled]) -> None:
        requests, vectors = zip(*items)
        out = self._apply(kind, task, torch.stack(vectors))  # [N, labels | dim]
        for request, vector in zip(requests, out):
            if request.params.normalize:
                vector = F.normalize(vector, dim=-1)
            results[request.req_id] = vector.tolist()

    def _fail(self, req_id: str, err: Exception, errors: dict[str, str]) -> None:
        logger.exception("the head of request %s failed", req_id)
        self._accumulators.pop(req_id, None)
        errors[req_id] = f"its task head failed: {type(err).__name__}: {err}"

    def _accumulator(self, item: PoolingRow) -> _Accumulator:
        req_id = item.request.req_id
        acc = self._accumulators.get(req_id)
        if acc is None or acc.next_position != item.start:  # new, or restarted after preemption
            acc = self._accumulators[req_id] = _Accumulator(item.start)
        return acc

    def _apply(self, kind: str, task: str | None, pooled: torch.Tensor) -> torch.Tensor:
        # pooled: [N, H] float32 -> classify: probabilities [N, labels]; embed: vectors [N, D]
        head = self.heads.get(task) if task is not None else None
        if kind == "classify":
            return torch.softmax(head(pooled), dim=-1)
        if head is not None and head.projection is not None:  # the request's normalize, resolved, applies after
            return pooled @ head.projection.float().t()  # [N, D]
        return pooled


def _finish_pool(params: PoolingParams, acc: _Accumulator, states: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The request's pooled vector [H] float32, once its last chunk is computed."""
    if params.pooling == "mean":
        return acc.total / num_tokens
    if params.pooling == "cls":
        return acc.total
    return pool(states, "last").float()
