"""A pooling request's params checked against the heads registered on its backbone, with what it
left open filled in (its head's task, pooling and normalizing)."""

from dataclasses import replace
from typing import TYPE_CHECKING

from polyhead.engine.core.kinds import KINDS
from polyhead.engine.core.params import PoolingParams

if TYPE_CHECKING:
    from torch import nn


def resolve_pooling_params(params: PoolingParams, task: str, heads: "dict[str, nn.Module]",
                           num_prompt_tokens: int) -> PoolingParams:
    """Check a pooling request against the registered heads and fill in what it left open: the head's
    task (params.task, else the request's routing task when a head is registered under it) and the
    pooling and normalize (the classify/embed head's own, else last and no normalizing: a decoder's
    defaults). Raises ValueError naming the field."""
    if params.kind == "score":  # the LM head scores; `task` only names the request's task (metrics)
        if not params.next_token_ids and params.num_scored_tokens > num_prompt_tokens - 1:
            raise ValueError(f"num_scored_tokens ({params.num_scored_tokens}) must be at most the prompt's "
                             f"length - 1 ({num_prompt_tokens - 1}): a scored token needs a token before it")
        return replace(params, pooling="last", normalize=False)
    name = params.task
    if name is not None and name not in heads:
        known = ", ".join(sorted(heads)) or "none registered"
        raise ValueError(f"task {name!r} has no head registered on this engine (known: {known})")
    if name is None and task in heads:
        name = task
    head = heads.get(name) if name is not None else None
    wanted = KINDS[params.kind].head  # the head class's name
    if KINDS[params.kind].needs_head and head is None:
        raise ValueError(f"a {params.kind} request needs a task with a registered {wanted} "
                         f"(task); for zero-shot classification score the label verbalizers "
                         f"(polyhead.tasks.zero_shot)")
    if head is not None:
        # imported only with a head registered (which loaded torch already): the HTTP process of a
        # server without trained heads never loads torch
        from polyhead.models import heads as head_classes

        if not isinstance(head, getattr(head_classes, wanted)):
            raise ValueError(f"task {name!r} has a {type(head).__name__}, but a {params.kind} request needs "
                             f"a {wanted}")
    head_pooling = getattr(head, "pooling", None)
    pooling = params.pooling or head_pooling or "last"
    if params.pooling is not None and head_pooling is not None and params.pooling != head_pooling:
        raise ValueError(f"pooling {params.pooling!r} differs from task {name!r}'s head, trained on "
                         f"{head_pooling!r} pooling")
    normalize = params.normalize if params.normalize is not None else bool(getattr(head, "normalize", False))
    return replace(params, task=name, pooling=pooling, normalize=normalize)
