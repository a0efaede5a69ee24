"""`polyhead bench offline` passes the weight-storage settings to the engine and reports memory."""

import json

import torch

from polyhead.bench.memory import model_tensor_bytes, process_rss_bytes
from polyhead.cli import main
from polyhead.llm import LLM
from tests.conftest import make_engine


def test_offline_takes_quantization_and_reports_rss(tiny_llama, tmp_path, monkeypatch, capsys):
    folder, _ = tiny_llama
    configs = []
    original = LLM.from_config.__func__

    def recording(cls, config):
        configs.append(config)
        return original(cls, config)

    monkeypatch.setattr(LLM, "from_config", classmethod(recording))
    out = tmp_path / "offline.json"
    assert main(["bench", "offline", "--model", str(folder), "--dtype", "float32", "--quantization", "int4",
                 "--group-size", "128", "--concurrency", "1,2", "--input-len", "8", "--output-len", "4",
                 "--kv-cache-memory", "16MiB", "--skip-transformers", "--json", str(out)]) == 0
    assert [(c.quantization, c.quantization_group_size) for c in configs] == [("int4", 128)]
    report = json.loads(out.read_text())
    assert [row["concurrency"] for row in report["rows"]] == [1, 2]
    assert report["rss_bytes"] > 50 * 2**20  # torch alone is more than that
    printed = capsys.readouterr().out
    assert "quantization int4 (group size 128)" in printed and "process RSS after the run:" in printed


def test_model_tensor_bytes_counts_each_storage_once():
    tied = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    tied.register_buffer("table", torch.zeros(3, dtype=torch.bfloat16))
    assert model_tensor_bytes(tied) == 10 * 4 * 4 + 3 * 2


def test_served_model_bytes_include_packed_copies(tiny_llama):
    folder, hf_model = tiny_llama
    served = make_engine(folder).backend.runner.model  # float32, linears packed by oneDNN
    config = served.config
    hf_bytes = sum(p.numel() * p.element_size() for p in hf_model.parameters())  # tied embedding once
    rotary = sum(b.untyped_storage().nbytes() for b in served.model.rotary.buffers())
    packed_lm_head = config.vocab_size * config.hidden_size * 4  # the tied head's packed copy
    assert model_tensor_bytes(served) == hf_bytes + packed_lm_head + rotary
    assert process_rss_bytes() > model_tensor_bytes(served)
