"""`polyhead bench perplexity`: llama-perplexity's chunking, scored through the engine's serving model,
against transformers computing the same chunks."""

import json

import pytest
import torch

from polyhead.bench.perplexity import chunks, load_text, perplexity, tokenize, tokenizer_adds_bos
from polyhead.cli import main
from polyhead.engine.decoder.scoring import next_token_logprobs
from tests.conftest import make_engine, make_tiny_model

N_CTX = 64


def reference_perplexity(hf_model, token_ids: list[int], n_ctx: int, bos_id: int | None) -> float:
    """transformers on the same chunks: one forward per chunk, the second half scored."""
    first, nll, count = n_ctx // 2, 0.0, 0
    with torch.no_grad():
        for chunk in chunks(token_ids, n_ctx, bos_id):
            ids = torch.tensor([chunk])
            log_probs = torch.log_softmax(hf_model(ids).logits[0, first:-1].float(), dim=-1)
            nll -= log_probs.gather(1, ids[0, first + 1:].unsqueeze(1)).double().sum().item()
            count += n_ctx - first - 1
    return float(torch.tensor(nll / count, dtype=torch.float64).exp())


@pytest.fixture(scope="module")
def tiny_text():
    return load_text()[:1000]  # bytes of the held-out text: ~1000 tokens of the tiny byte-level tokenizer


@pytest.mark.parametrize("arch", ["llama", "mistral-sliding-window"])
@pytest.mark.parametrize("add_bos", [False, True])
def test_engine_perplexity_matches_transformers(tmp_path, tiny_text, arch, add_bos):
    hf_model = make_tiny_model(tmp_path, arch)
    engine = make_engine(tmp_path)
    token_ids = tokenize(engine.tokenizer, tiny_text, add_bos)
    bos_id = engine.tokenizer.bos_token_id if add_bos else None
    result = perplexity(lambda chunk, first: next_token_logprobs(engine.backend.runner, chunk, first), token_ids, N_CTX,
                        bos_id)
    expected = reference_perplexity(hf_model, token_ids, N_CTX, bos_id)
    assert result.num_chunks == len(token_ids) // N_CTX
    assert result.num_scored == result.num_chunks * (N_CTX - N_CTX // 2 - 1)
    assert 1.5 < result.perplexity < float("inf")  # a random model: far from certain
    assert result.perplexity == pytest.approx(expected, rel=1e-4)


def test_chunks_follow_llama_perplexity():
    ids = list(range(10, 35))  # 25 tokens
    assert chunks(ids, 8, None) == [ids[0:8], ids[8:16], ids[16:24]]  # the tail (one token) is dropped
    assert chunks(ids, 8, 1) == [[1, *ids[1:8]], [1, *ids[9:16]], [1, *ids[17:24]]]  # BOS replaces the first
    with pytest.raises(ValueError, match="at least 26"):
        chunks(ids, 13, None)


def test_scoring_leaves_the_engine_serving(tiny_llama):
    """Scoring uses a private cache: generation afterwards is what it was before."""
    from polyhead.engine.core.params import SamplingParams
    from polyhead.llm import LLM

    folder, _ = tiny_llama
    llm = LLM.from_engine(make_engine(folder))
    params = SamplingParams(temperature=0.0, max_tokens=8)
    before = llm.generate("The harbour", params)[0].token_ids
    log_probs = next_token_logprobs(llm.engine.backend.runner, list(range(40, 80)), first=5)
    assert log_probs.shape == (34,) and bool((log_probs <= 0).all())
    assert llm.generate("The harbour", params)[0].token_ids == before
    with pytest.raises(ValueError, match="context"):
        next_token_logprobs(llm.engine.backend.runner, [5] * 300)


def test_cli_prints_and_writes_json(tiny_llama, tmp_path, tiny_text, capsys):
    folder, hf_model = tiny_llama
    text = tmp_path / "text.txt"
    text.write_text(tiny_text + "\n")  # one trailing newline is dropped, as llama-perplexity does
    out = tmp_path / "ppl.json"
    assert main(["bench", "perplexity", "--model", str(folder), "--dtype", "float32", "--text", str(text),
                 "--ctx", str(N_CTX), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert f"perplexity {report['perplexity']:.4f}" in printed
    assert "command: polyhead bench perplexity" in printed and f"--ctx {N_CTX}" in report["command"]
    engine = make_engine(folder)
    assert not tokenizer_adds_bos(engine.tokenizer) and not report["add_bos"]
    token_ids = tokenize(engine.tokenizer, tiny_text, False)
    assert report["num_tokens"] == len(token_ids)
    assert report["perplexity"] == pytest.approx(reference_perplexity(hf_model, token_ids, N_CTX, None), rel=1e-4)


def test_heldout_text_ships_about_5000_tokens_of_prose():
    from transformers import AutoTokenizer

    from polyhead.models.loader import gguf_to_hf_folder
    from polyhead.models.registry import resolve_model_path

    text = load_text()
    tokenizer = AutoTokenizer.from_pretrained(gguf_to_hf_folder(resolve_model_path(None)))
    assert 4500 <= len(tokenizer.encode(text, add_special_tokens=False)) <= 5500
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    assert len(paragraphs) > 40 and len(set(paragraphs)) == len(paragraphs)  # varied, nothing repeated
