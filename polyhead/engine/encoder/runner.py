"""Runs whole sequences through an encoder in one flat ragged batch and turns each into its
result: an embedding (pool, the task's projection if any, L2 norm if asked), a classify head's
label probabilities, or a tag head's per-token probabilities. A request's params arrive
resolved (pooling, normalize, task head: polyhead.engine.decoder.pooler.resolve_pooling_params)."""

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.engine.core.request import Request
from polyhead.models.bert import EncoderModel
from polyhead.models.encoder_inference import prepare_encoder_for_inference
from polyhead.models.heads import ClassifyHead

Pooled = list[float] | list[list[float]]


class EncoderRunner:
    def __init__(self, model: EncoderModel):
        self.model = prepare_encoder_for_inference(model)

    @torch.inference_mode()
    def execute(self, requests: list[Request], heads: dict[str, nn.Module]) -> list[Pooled]:
        """Each request's whole prompt in one forward; results in the order of `requests`."""
        # Longest first, so equal lengths sit together and share one attention call per layer.
        order = sorted(range(len(requests)), key=lambda i: -requests[i].num_prompt_tokens)
        seq_lens = [requests[i].num_prompt_tokens for i in order]
        input_ids = torch.tensor([t for i in order for t in requests[i].prompt_token_ids])
        positions = torch.cat([torch.arange(n) for n in seq_lens])
        hidden = self.model(input_ids, positions, seq_lens)  # [T, H]
        lens = torch.tensor(seq_lens)
        starts = lens.cumsum(0) - lens  # [B] first row of each sequence, batch order
        pooled = self._pool(hidden, starts, lens, [requests[i].params.pooling for i in order])  # [B, H] float32

        results: list[Pooled | None] = [None] * len(requests)
        groups: dict[str | None, list[int]] = {}  # task head -> batch rows of its pooled requests
        for row, i in enumerate(order):
            params = requests[i].params
            if params.kind == "tag":  # every token's state, in the request's own order
                states = hidden[starts[row]:starts[row] + seq_lens[row]]
                results[i] = heads[params.task](states).softmax(-1).tolist()
            else:
                groups.setdefault(params.task, []).append(row)
        for task, rows in groups.items():  # one head call per task
            out = self._apply(heads.get(task) if task is not None else None, pooled[rows])  # [n, labels | D]
            for row, vector in zip(rows, out):
                i = order[row]
                if requests[i].params.normalize:
                    vector = F.normalize(vector, dim=-1)
                results[i] = vector.tolist()
        return results

    @staticmethod
    def _pool(hidden: torch.Tensor, starts: torch.Tensor, lens: torch.Tensor, methods: list[str]) -> torch.Tensor:
        # hidden: [T, H] -> [B, H] float32, one row per sequence (batch order) pooled as it asks
        pooled = hidden[starts].float()  # cls: each sequence's first token
        last = [i for i, m in enumerate(methods) if m == "last"]
        if last:
            pooled[last] = hidden[starts[last] + lens[last] - 1].float()
        mean = [i for i, m in enumerate(methods) if m == "mean"]
        if mean:
            seq_index = torch.repeat_interleave(torch.arange(len(lens)), lens)  # [T]
            sums = torch.zeros(len(lens), hidden.shape[1]).index_add_(0, seq_index, hidden.float())
            pooled[mean] = sums[mean] / lens[mean, None]
        return pooled

    @staticmethod
    def _apply(head: nn.Module | None, pooled: torch.Tensor) -> torch.Tensor:
        # pooled: [n, H] float32 -> classify: probabilities [n, labels]; embed: vectors [n, D]
        if isinstance(head, ClassifyHead):
            return head(pooled).softmax(-1)
        if head is not None and head.projection is not None:  # an EmbedPooler with a projection
            return pooled @ head.projection.float().t()
        return pooled
