"""--lora-modules adapters served as models, as vLLM does: `model` = the adapter's name runs the
base model with that adapter on its rows, and /v1/models lists it with its parent."""

import pytest
import torch
from openai import NotFoundError, OpenAI

from polyhead.config import EngineConfig
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.engine.client.process_engine import ProcessEngine
from polyhead.server.app import ServerSettings, build_app
from tests.conftest import serve_in_thread
from tests.lora.conftest import make_adapter, peft_reference
from tests.server.conftest import MODEL, MODES


@pytest.fixture(scope="module")
def adapter(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sql-lora")
    make_adapter(tiny_llama[0], folder, seed=9, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    return folder


@pytest.mark.parametrize("mode", MODES)
def test_an_adapter_named_as_the_model_answers_like_peft(tiny_llama, adapter, mode):
    config = EngineConfig(model=str(tiny_llama[0]), dtype="float32", kv_cache_memory="16MiB", max_model_len=128,
                          adapters={"sql": str(adapter)})
    engine = ProcessEngine.from_config(config) if mode == "process" else AsyncEngine.from_config(config)
    app = build_app(engine, ServerSettings(model_names=[MODEL], lora_names=["sql"], default_max_tokens=6))
    try:
        with serve_in_thread(app, start_timeout_s=60) as url:
            client = OpenAI(base_url=f"{url}/v1", api_key="none")
            cards = {m.id: m for m in client.models.list().data}
            assert set(cards) == {MODEL, "sql"} and cards["sql"].parent == MODEL
            lora = client.completions.create(model="sql", prompt="select the rows", temperature=0, max_tokens=6)
            base = client.completions.create(model=MODEL, prompt="select the rows", temperature=0, max_tokens=6)
            with pytest.raises(NotFoundError, match="available: tiny, sql"):
                client.completions.create(model="sqll", prompt="x", max_tokens=2)
            metrics = client.with_options(base_url=url).get("/metrics", cast_to=str)
    finally:
        engine.stop()
    tokenizer = app.state.server.tokenizer
    ids = tokenizer.encode("select the rows", add_special_tokens=False)
    with torch.no_grad():
        out = peft_reference(tiny_llama[0], adapter).generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)
    assert lora.choices[0].text == tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert lora.choices[0].text != base.choices[0].text
    assert 'polyhead_requests_total{status="ok",task="sql"}' in metrics
