"""Pooling rows on the real default model equal transformers' own hidden states and log-probs,
while greedy decodes run beside them unchanged."""

import pytest
import torch

from polyhead.config import EngineConfig
from polyhead.engine.core.params import PoolingParams, SamplingParams
from tests.engine.pooling_reference import assert_pooled_close

pytestmark = pytest.mark.model


def test_embed_and_score_rows_beside_decodes_match_transformers(default_model, hf_default_model):
    from polyhead.engine.core.engine import Engine
    from polyhead.engine.decoder.backend import DecoderBackend

    engine = Engine(DecoderBackend(EngineConfig(dtype="float32", kv_cache_memory="64MiB", max_num_batched_tokens=24),
                       default_model))
    tok = default_model.tokenizer
    text = tok.encode("The quick brown fox jumps over the lazy dog near the quiet river bank.",
                      add_special_tokens=False)
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    engine.add_request(tok.encode("The capital of France is", add_special_tokens=False), greedy, req_id="gen")
    engine.step()
    engine.add_request(text, PoolingParams("embed", pooling="mean"), req_id="mean")  # chunked: budget 24
    engine.add_request(text, PoolingParams("score", num_scored_tokens=5), req_id="score")
    results = {}
    while engine.has_unfinished_requests():
        results.update({o.req_id: o for o in engine.step() if o.finished})
    with torch.no_grad():
        ids = torch.tensor([text])
        states = hf_default_model.model(ids).last_hidden_state[0].float()  # [T, H]
        log_probs = torch.log_softmax(hf_default_model(ids).logits[0].float(), dim=-1)
        prompt = torch.tensor([tok.encode("The capital of France is", add_special_tokens=False)])
        want_gen = hf_default_model.generate(prompt, max_new_tokens=6, do_sample=False)[0, prompt.shape[1]:].tolist()
    assert_pooled_close(results["mean"].pooled, states.mean(0).tolist(), tol=1e-3)
    want_score = sum(float(log_probs[p, text[p + 1]]) for p in range(len(text) - 6, len(text) - 1))
    assert results["score"].pooled == pytest.approx(want_score, abs=1e-3)
    assert results["gen"].token_ids == want_gen
