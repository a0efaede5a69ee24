"""Export -> load the task packs as the server does -> the same predictions as the trained model."""

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from polyhead.models.heads import load_head, pool
from polyhead.models.loader import load_model
from polyhead.tasks.manifest import load_manifest
from polyhead.train.export import export_run
from polyhead.train.model import MultiTaskModel
from tests.train.conftest import TASKS, engine_hidden

SEQS = [[5, 17, 99, 3, 42], [8, 8, 120, 61], [77, 2, 19, 19, 200, 31, 6]]


def _trained(folder, mode):
    torch.manual_seed(3)
    model = MultiTaskModel(folder, TASKS, mode=mode).eval()
    with torch.no_grad():  # stand-in for training: every trainable weight moved off its init
        for name, param in model.named_parameters():
            if name in model.trainable_names():
                param.add_(torch.randn_like(param) * 0.3)
    return model


def _padded(seqs):
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return ids, mask


def test_heads_packs_on_the_engine_backbone_predict_like_the_trainer(tiny_folder, tmp_path):
    model = _trained(tiny_folder, "heads")
    manifest = export_run(model, tmp_path, backbone=str(tiny_folder))
    specs = {s.name: s for s in load_manifest(manifest)}
    assert set(specs) == {"sentiment", "ner", "reply", "similar"}
    assert specs["sentiment"].labels == ["neg", "pos"] and specs["ner"].kind == "tag"
    assert specs["reply"].head is None and specs["reply"].adapter is None
    served = load_model(str(tiny_folder), torch.float32)
    ids, mask = _padded(SEQS)
    with torch.no_grad():
        classify = model.forward_task("sentiment", ids, mask).logits.softmax(-1)  # [3, 2]
        tags = model.forward_task("ner", ids, mask).logits.argmax(-1)  # [3, T]
        vectors = model.forward_task("similar", ids, mask, positive_ids=ids, positive_mask=mask).embeddings[:3]
    head = load_head(specs["sentiment"].head, "classify", 2, 64, specs["sentiment"].pooling)
    tag_head = load_head(specs["ner"].head, "tag", 3, 64)
    projection = load_file(specs["similar"].head)["weight"]  # [D, H]
    for row, seq in enumerate(SEQS):
        hidden = engine_hidden(served, seq)  # [T, H] what the engine computes for this prompt
        probs = head(pool(hidden, "last")[None])[0].softmax(-1)
        torch.testing.assert_close(probs, classify[row], atol=1e-5, rtol=1e-5)
        assert tag_head(hidden).argmax(-1).tolist() == tags[row, :len(seq)].tolist()
        vector = torch.nn.functional.normalize(pool(hidden, specs["similar"].pooling) @ projection.t(), dim=-1)
        assert specs["similar"].normalize
        torch.testing.assert_close(vector, vectors[row], atol=1e-5, rtol=1e-5)


def test_lora_packs_load_in_peft_and_predict_like_the_trainer(tiny_folder, tmp_path):
    model = _trained(tiny_folder, "lora")
    specs = {s.name: s for s in load_manifest(export_run(model, tmp_path, backbone=str(tiny_folder)))}
    ids, mask = _padded(SEQS)
    with torch.no_grad():
        expected = model.forward_task("sentiment", ids, mask).logits.softmax(-1)
        base = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
        peft = PeftModel.from_pretrained(base, specs["sentiment"].adapter).eval()
        hidden = peft.get_base_model().model(input_ids=ids, attention_mask=mask).last_hidden_state
        head = load_head(specs["sentiment"].head, "classify", 2, 64)
        last = hidden[torch.arange(3), mask.sum(1) - 1]
        got = head(last).softmax(-1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert all(specs[n].adapter is not None for n in specs)  # generate tasks carry their adapter too
