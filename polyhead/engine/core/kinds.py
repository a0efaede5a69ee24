"""The one registry of request kinds: what each pooling kind reads, which backbones serve it and
which endpoint serves its tasks. Validation (params), the encoder's checks, task manifests, the
trainer and the server's routing all read this table; a new kind is one row here (and its
computation in the poolers).
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestKind:
    name: str
    is_pooling: bool  # prefill-only: the prompt's hidden states go to a head, not the sampler
    head: str | None  # the head class its task registers (models/heads.py); None: none (generate, score)
    needs_head: bool  # a request cannot run without its task's head (else zero-shot or the backbone's own)
    on_encoder: bool  # an encoder backbone serves it (generate and score need an LM head)
    is_task_kind: bool  # a task manifest and the trainer may declare it (score is the zero-shot internals)
    endpoint: str | None  # the HTTP endpoint that serves its tasks


KINDS: dict[str, RequestKind] = {kind.name: kind for kind in (
    RequestKind("generate", False, None, False, False, True, "/v1/chat/completions"),
    RequestKind("classify", True, "ClassifyHead", True, True, True, "/v1/classify"),
    RequestKind("tag", True, "TagHead", True, True, True, "/v1/tag"),
    RequestKind("embed", True, "EmbedPooler", False, True, True, "/v1/embeddings"),
    RequestKind("score", True, None, False, False, False, None),
)}

POOLING_KINDS = tuple(k.name for k in KINDS.values() if k.is_pooling)  # classify, tag, embed, score
ENCODER_KINDS = tuple(k.name for k in KINDS.values() if k.on_encoder)  # what an encoder backbone serves
TASK_KINDS = tuple(k.name for k in KINDS.values() if k.is_task_kind)  # generate, classify, tag, embed
