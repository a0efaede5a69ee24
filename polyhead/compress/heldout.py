"""Held-out loss: mean next-token loss over the shipped text's held-out tail (never used for
calibration), a quick quality check until a perplexity benchmark exists.

    python -m polyhead.compress.heldout [MODEL ...]    # prints loss and perplexity per model
"""

import math
import sys

import torch

from polyhead.compress.calibration import forward_sequence, split_default_text, token_sequences


@torch.inference_mode()
def held_out_loss(model: str | None, seq_len: int = 256) -> tuple[float, int]:
    """(mean loss in nats per token, tokens scored), float32."""
    from polyhead.models.loader import load_model

    loaded = load_model(model, torch.float32)
    total, count = 0.0, 0
    for ids in token_sequences(loaded.tokenizer, split_default_text()[1], seq_len, 1 << 30):
        logits = loaded.model.compute_logits(forward_sequence(loaded.model, ids))  # [T, vocab]
        total += float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum"))
        count += len(ids) - 1
    return total / count, count


def main(argv: list[str]) -> int:
    for model in argv or [None]:
        loss, count = held_out_loss(model)
        print(f"{model or 'default'}: held-out loss {loss:.3f} nats/token, perplexity {math.exp(loss):.1f} "
              f"({count} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
