"""Per-task metrics: accuracy and macro-F1 (classify), span-level F1 (tag, seqeval-style),
loss and perplexity (generate), retrieval accuracy (embed). Plain Python on lists, so they are
easy to check by hand (tests/train/test_metrics.py)."""

import math

import torch

# the metric each kind is judged by when a run picks "the best checkpoint" without naming one
PRIMARY_METRIC = {"classify": "macro_f1", "tag": "span_f1", "generate": "perplexity", "embed": "retrieval_acc"}
LOWER_IS_BETTER = {"loss", "perplexity"}


def accuracy(pred: list[int], gold: list[int]) -> float:
    if len(pred) != len(gold) or not gold:
        raise ValueError(f"accuracy needs equal, non-empty lists; got {len(pred)} predictions, {len(gold)} labels")
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def macro_f1(pred: list[int], gold: list[int], num_labels: int) -> float:
    """Mean F1 over the classes present in gold or predictions (sklearn's macro average over those)."""
    scores = []
    for c in sorted(set(gold) | set(pred)):
        if not 0 <= c < num_labels:
            raise ValueError(f"class id {c} outside 0..{num_labels - 1}")
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        scores.append(_f1(tp, fp, fn))
    return sum(scores) / len(scores) if scores else 0.0


def bio_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """BIO tags -> {(type, start, end_exclusive)}. As seqeval does by default, an I-X that does not
    continue an X span (after O, or after another type) starts a new span."""
    spans, kind, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and kind == label
        if kind is not None and not continues:
            spans.add((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = label, i
    return spans


def span_prf(pred_tags: list[list[str]], gold_tags: list[list[str]]) -> dict[str, float]:
    """Micro precision/recall/F1 over exact (type, start, end) spans, summed over sentences."""
    if len(pred_tags) != len(gold_tags):
        raise ValueError(f"{len(pred_tags)} predicted sentences for {len(gold_tags)} gold ones")
    tp = num_pred = num_gold = 0
    for pred, gold in zip(pred_tags, gold_tags):
        if len(pred) != len(gold):
            raise ValueError(f"a sentence has {len(pred)} predicted tags for {len(gold)} gold tags")
        p, g = bio_spans(pred), bio_spans(gold)
        tp, num_pred, num_gold = tp + len(p & g), num_pred + len(p), num_gold + len(g)
    precision = tp / num_pred if num_pred else 0.0
    recall = tp / num_gold if num_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"span_precision": precision, "span_recall": recall, "span_f1": f1}


def perplexity(total_nll: float, num_tokens: int) -> dict[str, float]:
    if num_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    loss = total_nll / num_tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def retrieval_accuracy(queries: torch.Tensor, documents: torch.Tensor) -> float:
    """queries, documents: [N, D]; query i's positive is document i. The share of queries whose
    positive scores highest (dot product; cosine when the vectors are normalized) among all N."""
    if queries.shape != documents.shape or queries.shape[0] == 0:
        raise ValueError(f"retrieval needs equal, non-empty [N, D] sets; got {tuple(queries.shape)} "
                         f"and {tuple(documents.shape)}")
    scores = queries.float() @ documents.float().t()  # [N, N]
    return (scores.argmax(1) == torch.arange(scores.shape[0])).float().mean().item()


def is_better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric.split("/")[-1] in LOWER_IS_BETTER else new > old


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0
