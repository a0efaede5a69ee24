"""The training model against the engine's backbone, PEFT's own loading, and its parameter counts."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from polyhead.models.heads import pool
from polyhead.models.loader import load_model
from polyhead.train.model import MultiTaskModel
from tests.train.conftest import TASKS, engine_hidden


def _batch(lengths, vocab=250, seed=0):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=gen)
        mask[i, :n] = 1
    return ids, mask


def test_hidden_states_and_heads_equal_the_engine_backbone(tiny_folder):
    torch.manual_seed(0)
    model = MultiTaskModel(tiny_folder, TASKS, mode="heads").eval()
    served = load_model(str(tiny_folder), torch.float32)
    ids, mask = _batch([7, 12, 3])
    with torch.no_grad():
        hidden = model.hidden_states(ids, mask)
        logits = model.forward_task("sentiment", ids, mask).logits  # [3, 2]
    for row, n in enumerate([7, 12, 3]):
        expected = engine_hidden(served, ids[row, :n].tolist())  # [n, H]
        torch.testing.assert_close(hidden[row, :n], expected, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            served_logits = model.heads["sentiment"](pool(expected, "last")[None])[0]
        torch.testing.assert_close(logits[row], served_logits, atol=1e-5, rtol=1e-5)


def test_parameter_counts_per_mode(tiny_folder):
    heads = MultiTaskModel(tiny_folder, TASKS, mode="heads").parameter_counts()
    lora = MultiTaskModel(tiny_folder, TASKS, mode="lora").parameter_counts()
    full = MultiTaskModel(tiny_folder, TASKS, mode="full").parameter_counts()
    hidden = 64
    head_params = (2 * hidden + 2) + (3 * hidden + 3) + hidden * hidden  # classify, tag, embed projection
    assert heads["trainable"] == head_params
    # per adapted linear (in, out): r * (in + out); q 64->64, k,v 64->32, o 64->64, gate/up 64->128, down 128->64
    per_layer = 8 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 128) + (128 + 64))
    assert lora["trainable"] == head_params + 4 * 2 * per_layer  # 4 tasks x 2 layers
    assert lora["total"] == heads["total"] + 4 * 2 * per_layer
    assert full["trainable"] == full["total"] == heads["total"]


def test_exported_adapter_loads_in_peft_with_equal_outputs(tiny_folder, tmp_path):
    torch.manual_seed(0)
    model = MultiTaskModel(tiny_folder, TASKS, mode="lora").eval()
    with torch.no_grad():  # LoRA B starts at zero; make every adapter differ from the base and each other
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    ids, mask = _batch([9, 5])
    model.save_adapter("ner", tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    with torch.no_grad():
        model.use_task("ner")
        ours = model.hidden_states(ids, mask)
        model.use_task("sentiment")
        other = model.hidden_states(ids, mask)
        base = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
        plain = base.model(input_ids=ids, attention_mask=mask).last_hidden_state
        peft = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        theirs = peft.get_base_model().model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(theirs[real], ours[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[real], other[real], atol=1e-3)  # adapters are per task
    assert not torch.allclose(ours[real], plain[real], atol=1e-3)


def test_bad_mode_and_embed_without_pairs_are_errors(tiny_folder):
    with pytest.raises(ValueError, match="train.mode"):
        MultiTaskModel(tiny_folder, TASKS, mode="everything")
    model = MultiTaskModel(tiny_folder, TASKS, mode="heads")
    ids, mask = _batch([4])
    with pytest.raises(ValueError, match="positive_ids"):
        model.forward_task("similar", ids, mask)
