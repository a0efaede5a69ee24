"""References for pooling rows, computed straight from the transformers model run alone on one
prompt (its `last_hidden_state` is the final-normed state polyhead's heads read), and random heads."""

import torch
import torch.nn.functional as F

from polyhead.models.heads import ClassifyHead, EmbedPooler, TagHead, pool

HIDDEN = 64  # the tiny models' hidden size (tests/conftest.py)


def make_heads(seed: int = 0) -> dict:
    """task -> head, random but fixed, for every pooling a head can use."""
    torch.manual_seed(seed)
    heads = {"sentiment": ClassifyHead(HIDDEN, 3, "last"), "topic": ClassifyHead(HIDDEN, 4, "mean"),
             "first": ClassifyHead(HIDDEN, 2, "cls"), "ner": TagHead(HIDDEN, 5),
             "embed": EmbedPooler("mean", normalize=True, projection=torch.randn(8, HIDDEN))}
    for head in heads.values():
        for param in head.parameters():
            torch.nn.init.normal_(param, std=0.5)
    return heads


def register_heads(engine, heads: dict) -> None:
    for task, head in heads.items():
        engine.register_head(task, head)


@torch.no_grad()
def hidden_states(hf, prompt: list[int]) -> torch.Tensor:
    return hf.model(torch.tensor([prompt])).last_hidden_state[0].float()  # [T, H]


@torch.no_grad()
def reference(hf, heads: dict, prompt: list[int], kind: str, task: str | None = None,
              pooling: str | None = None, normalize: bool = False, num_scored_tokens: int = 0):
    """What a pooling request on `prompt` must return, computed without the engine."""
    states = hidden_states(hf, prompt)
    head = heads.get(task)
    if kind == "score":
        log_probs = torch.log_softmax(hf(torch.tensor([prompt])).logits[0].float(), dim=-1)  # [T, V]
        positions = range(len(prompt) - num_scored_tokens - 1, len(prompt) - 1)
        return sum(float(log_probs[p, prompt[p + 1]]) for p in positions)
    if kind == "tag":
        return torch.softmax(head(states), dim=-1).tolist()
    pooled = pool(states, pooling or getattr(head, "pooling", None) or "last")[None]  # [1, H]
    if kind == "classify":
        return torch.softmax(head(pooled), dim=-1)[0].tolist()
    out = pooled if head is None else head(pooled)
    return (F.normalize(out, dim=-1) if normalize else out)[0].tolist()


def assert_pooled_close(actual, expected, tol: float = 1e-4) -> None:
    torch.testing.assert_close(torch.tensor(actual, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                               atol=tol, rtol=tol)
