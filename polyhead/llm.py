"""The offline entry point: `LLM().generate(prompts, params)` runs a batch to completion;
`LLM(model="all-MiniLM-L6-v2").embed(texts)` gives sentence embeddings from an encoder."""

from collections.abc import Iterator, Sequence

from tqdm import tqdm

from polyhead.config import EngineConfig
from polyhead.engine.encoder_engine import EncoderEngine
from polyhead.engine.engine import LLMEngine
from polyhead.engine.factory import build_engine
from polyhead.engine.outputs import RequestOutput
from polyhead.engine.params import PoolingParams, SamplingParams

Prompt = str | list[int]
Messages = list[dict[str, str]]


class LLM:
    def __init__(self, model: str | None = None, dtype: str = "auto", **engine_options):
        """A decoder model gets the LLMEngine, a BERT-family encoder the EncoderEngine (embed only)."""
        self._use(build_engine(EngineConfig(model=model, dtype=dtype, **engine_options)))

    @classmethod
    def from_config(cls, config: EngineConfig) -> "LLM":
        return cls.from_engine(build_engine(config))

    @classmethod
    def from_engine(cls, engine: LLMEngine | EncoderEngine) -> "LLM":
        llm = cls.__new__(cls)
        llm._use(engine)
        return llm

    def _use(self, engine: LLMEngine | EncoderEngine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = False, adapter: str | None = None) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids); outputs come back in prompt order.
        `adapter`: a registered LoRA adapter for all of them (None: the base weights)."""
        return self._run(prompts, params, use_tqdm, "generating", adapter=adapter)

    def embed(self, prompts: Prompt | Sequence[Prompt], params: PoolingParams | None = None,
              use_tqdm: bool = False, task: str = "") -> list[RequestOutput]:
        """One embedding per prompt in `RequestOutput.pooled`, in prompt order. On an encoder the
        default is the model's own sentence embedding (all-MiniLM-L6-v2: mean-pooled, normalized)."""
        return self._run(prompts, params or PoolingParams(kind="embed"), use_tqdm, "embedding", task=task)

    def _run(self, prompts, params, use_tqdm: bool, desc: str, **routing) -> list[RequestOutput]:
        prompts = [prompts] if _is_single_prompt(prompts) else list(prompts)
        params_list = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"params has {len(params_list)} entries for {len(prompts)} prompts")
        req_ids = []
        try:  # all or nothing: a bad prompt leaves no sibling queued
            for prompt, p in zip(prompts, params_list):
                req_ids.append(self.engine.add_request(prompt, p, **routing))
        except ValueError:
            for req_id in req_ids:
                self.engine.abort_request(req_id)
            self.engine.step()  # collect the aborted outputs so they do not leak into a later call
            raise
        wanted, finished = set(req_ids), {}  # type: set[str], dict[str, RequestOutput]
        with tqdm(total=len(req_ids), desc=desc, unit="req", disable=not use_tqdm) as bar:
            while len(finished) < len(req_ids):
                for out in self.engine.step():
                    if out.finished and out.req_id in wanted:
                        finished[out.req_id] = out
                        bar.update(1)
        return [finished[req_id] for req_id in req_ids]

    def chat(self, messages: Messages | Sequence[Messages], params: SamplingParams | None = None,
             use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate replies to one conversation or several, formatted by the model's chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        return self.generate([self.apply_chat_template(c) for c in conversations], params, use_tqdm)

    def stream(self, prompt: Prompt, params: SamplingParams | None = None,
               adapter: str | None = None) -> Iterator[RequestOutput]:
        """Yield one output per step for a single prompt, with `new_text` holding the fresh text."""
        req_id = self.engine.add_request(prompt, params, adapter=adapter)
        try:
            while True:
                for out in self.engine.step():
                    if out.req_id == req_id:
                        yield out
                        if out.finished:
                            return
        finally:
            self.engine.abort_request(req_id)

    def apply_chat_template(self, messages: Messages) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template; use generate() with a plain prompt")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def _is_single_prompt(prompts) -> bool:
    return isinstance(prompts, str) or (isinstance(prompts, list) and bool(prompts)
                                        and all(isinstance(t, int) for t in prompts))
