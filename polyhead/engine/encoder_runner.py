"""Runs whole sequences through an encoder in one flat ragged batch and turns each into its
pooled result: an embedding (pool, optional projection, optional L2 norm) or a classify head's
label probabilities."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from polyhead.engine.request import Request
from polyhead.models.bert import EncoderModel
from polyhead.models.encoder_loader import SentenceConfig
from polyhead.models.heads import ClassifyHead, EmbedPooler
from polyhead.models.packed_linear import can_pack, pack_linear_layers


@dataclass(slots=True)
class PoolingPlan:
    """What one request's row becomes, resolved from its params, its task's head and the model."""

    pooling: str  # mean | cls | last
    head: ClassifyHead | EmbedPooler | None  # classify: the task's head; embed: the task's pooler, if any
    normalize: bool  # embed: L2-normalize the (projected) vector


class EncoderRunner:
    def __init__(self, model: EncoderModel, sentence: SentenceConfig):
        weight = next(model.parameters())
        self.model = pack_linear_layers(model) if can_pack(weight.device) else model
        self.sentence = sentence

    def plan(self, request: Request, heads: dict[str, ClassifyHead | EmbedPooler]) -> PoolingPlan:
        params, head = request.params, heads.get(request.task)
        if params.kind == "classify":
            return PoolingPlan(params.pooling or head.pooling, head, False)
        pooler = head if isinstance(head, EmbedPooler) else None
        default_pooling = pooler.pooling if pooler else self.sentence.pooling
        default_normalize = pooler.normalize if pooler else self.sentence.normalize
        return PoolingPlan(params.pooling or default_pooling, pooler,
                           default_normalize if params.normalize is None else params.normalize)

    @torch.inference_mode()
    def execute(self, requests: list[Request], plans: list[PoolingPlan]) -> list[list[float]]:
        """Each request's whole prompt in one forward; results in the order of `requests`."""
        # Longest first, so equal lengths sit together and share one attention call per layer.
        order = sorted(range(len(requests)), key=lambda i: -requests[i].num_prompt_tokens)
        seq_lens = [requests[i].num_prompt_tokens for i in order]
        input_ids = torch.tensor([t for i in order for t in requests[i].prompt_token_ids])
        positions = torch.cat([torch.arange(n) for n in seq_lens])
        hidden = self.model(input_ids, positions, seq_lens)  # [T, H]
        pooled = self._pool(hidden, seq_lens, [plans[i].pooling for i in order])  # [B, H] float32, batch order

        row_of = torch.empty(len(order), dtype=torch.long)  # request i's row in batch order
        row_of[order] = torch.arange(len(order))
        return self._apply_heads(pooled[row_of], plans)

    def _pool(self, hidden: torch.Tensor, seq_lens: list[int], methods: list[str]) -> torch.Tensor:
        # hidden: [T, H] -> [B, H] float32, one row per sequence in batch order
        lens = torch.tensor(seq_lens)
        ends = lens.cumsum(0)
        pooled = hidden[ends - lens].float()  # cls: each sequence's first token
        last = [i for i, m in enumerate(methods) if m == "last"]
        if last:
            pooled[last] = hidden[ends[last] - 1].float()
        mean = [i for i, m in enumerate(methods) if m == "mean"]
        if mean:
            seq_index = torch.repeat_interleave(torch.arange(len(seq_lens)), lens)  # [T]
            sums = torch.zeros(len(seq_lens), hidden.shape[1]).index_add_(0, seq_index, hidden.float())
            pooled[mean] = sums[mean] / lens[mean, None]
        return pooled

    def _apply_heads(self, pooled: torch.Tensor, plans: list[PoolingPlan]) -> list[list[float]]:
        # pooled: [N, H] float32, in request order -> one list per request
        out: list[list[float] | None] = [None] * len(plans)
        by_head: dict[int, list[int]] = {}
        for i, plan in enumerate(plans):
            by_head.setdefault(id(plan.head), []).append(i)
        for rows in by_head.values():
            head = plans[rows[0]].head
            x = pooled[rows]
            if isinstance(head, ClassifyHead):
                x = head(x).softmax(-1)  # [n, labels]
            else:
                if head is not None and head.projection is not None:
                    x = x @ head.projection.float().t()
                norm = torch.tensor([plans[i].normalize for i in rows])
                x = torch.where(norm[:, None], F.normalize(x, dim=-1), x)
            for i, vector in zip(rows, x.tolist()):
                out[i] = vector
        return out
