"""The offline entry point: `LLM().generate(prompts, params)` runs a batch to completion;
`classify`, `tag`, `embed` and `encode` run pooling requests (prefill-only, one result each)
through the same engine, batched with whatever else it runs; `LLM(model="all-MiniLM-L6-v2")
.embed(texts)` gives sentence embeddings from an encoder."""

from collections.abc import Iterator, Sequence

from tqdm import tqdm

from polyhead.config import EngineConfig
from polyhead.engine.core.engine import Engine
from polyhead.engine.core.outputs import RequestOutput
from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.engine.factory import build_engine
from polyhead.models.heads import EmbedPooler, load_head
from polyhead.tasks import zero_shot
from polyhead.tasks.spec import TaskSpec

Prompt = str | list[int]
Messages = list[dict[str, str]]


class LLM:
    def __init__(self, model: str | None = None, dtype: str = "auto", **engine_options):
        """A decoder model gets the decoder backend, a BERT-family encoder the encoder backend
        (embed, classify, tag), both under one Engine."""
        self._use(build_engine(EngineConfig(model=model, dtype=dtype, **engine_options)))

    @classmethod
    def from_config(cls, config: EngineConfig) -> "LLM":
        return cls.from_engine(build_engine(config))

    @classmethod
    def from_engine(cls, engine: Engine) -> "LLM":
        llm = cls.__new__(cls)
        llm._use(engine)
        return llm

    def _use(self, engine: Engine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.tasks: dict[str, TaskSpec] = {}  # registered by register_task

    def register_task(self, spec: TaskSpec) -> None:
        """Serve a classify / tag / embed task: load its head (a zero-shot classify task has none)."""
        if spec.kind == "generate":
            raise ValueError(f"task {spec.name!r} is a generate task: use generate() or chat()")
        hidden = self.engine.info.hidden_size
        if spec.kind == "embed":
            projection = None
            if spec.head is not None:
                from safetensors.torch import load_file
                projection = load_file(spec.head)["weight"]
            self.engine.register_head(spec.name, EmbedPooler(spec.pooling, spec.normalize, projection))
        elif spec.head is not None:
            self.engine.register_head(spec.name, load_head(spec.head, spec.kind, len(spec.labels), hidden,
                                                           spec.pooling))
        self.tasks[spec.name] = spec

    def encode(self, prompts: Prompt | Sequence[Prompt], params: PoolingParams, task: str = "",
               use_tqdm: bool = False) -> list[RequestOutput]:
        """Run pooling requests (classify / tag / embed / score); each output's `pooled` holds the result."""
        return self._run_prompts(prompts, params, use_tqdm, "encoding", task=task)

    def classify(self, texts: str | Sequence[str], task: str | Sequence[str]) -> list[dict]:
        """label -> probability for each text, by the task's head or, without one, by zero-shot label
        verbalizers. Several tasks (fan-out): task -> that mapping per text, one shared prefill."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        names = [task] if isinstance(task, str) else list(task)
        specs = [self._task(name, "classify") for name in names]
        headed = [s for s in specs if not s.is_zero_shot]
        items = [(s.render(text), PoolingParams("classify", task=s.name), {"task": s.name})
                 for text in texts for s in headed]
        for i in range(len(texts)):  # a text's later tasks wait for its first: prefix-cache hits
            first = i * len(headed)
            for j in range(first + 1, first + len(headed)):
                items[j][2]["after_index"] = first
        outputs = iter(_check_pooled(self._run(items)))
        results = [{} for _ in texts]
        for result in results:
            for spec in headed:
                result[spec.name] = dict(zip(spec.labels, next(outputs).pooled))
        for spec in specs:
            if spec.is_zero_shot:
                plans = [zero_shot.build_plan(spec, self.tokenizer, text) for text in texts]
                for result, probs in zip(results, zero_shot.classify(self.engine, plans)):
                    result[spec.name] = probs
        return [r[names[0]] for r in results] if isinstance(task, str) else [{n: r[n] for n in names} for r in results]

    def tag(self, texts: str | Sequence[str], task: str) -> list[list[tuple[str, str, float]]]:
        """(token text, label, probability) for every token of each text, by the task's tag head."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        spec = self._task(task, "tag")
        outputs = _check_pooled(self._run([(t, PoolingParams("tag", task=task), {"task": task}) for t in texts]))
        tagged = []
        for out in outputs:
            rows = []
            for token_id, probs in zip(out.prompt_token_ids, out.pooled):
                best = max(range(len(probs)), key=probs.__getitem__)
                rows.append((self.tokenizer.decode([token_id]), spec.labels[best], probs[best]))
            tagged.append(rows)
        return tagged

    def _task(self, name: str, kind: str) -> TaskSpec:
        spec = self.tasks.get(name)
        if spec is None:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise ValueError(f"task {name!r} is not registered (register_task; registered: {known})")
        if spec.kind != kind:
            raise ValueError(f"task {name!r} is a {spec.kind} task, not {kind}")
        return spec

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = False, adapter: str | None = None) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids); outputs come back in prompt order.
        `adapter`: a registered LoRA adapter for all of them (None: the base weights)."""
        return self._run_prompts(prompts, params, use_tqdm, "generating", adapter=adapter)

    def embed(self, prompts: Prompt | Sequence[Prompt], params: PoolingParams | None = None,
              use_tqdm: bool = False, task: str = "") -> list[RequestOutput]:
        """One embedding per prompt in `RequestOutput.pooled`, in prompt order. On an encoder the
        default is the model's own sentence embedding (all-MiniLM-L6-v2: mean-pooled, normalized)."""
        return self._run_prompts(prompts, params or PoolingParams(kind="embed"), use_tqdm, "embedding", task=task)

    def _run_prompts(self, prompts, params, use_tqdm: bool, desc: str, **routing) -> list[RequestOutput]:
        prompts = [prompts] if _is_single_prompt(prompts) else list(prompts)
        params_list = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"params has {len(params_list)} entries for {len(prompts)} prompts")
        return self._run([(prompt, p, routing) for prompt, p in zip(prompts, params_list)], use_tqdm, desc)

    def _run(self, items: list[tuple], use_tqdm: bool = False, desc: str = "running") -> list[RequestOutput]:
        """items: (prompt, params, routing); routing's `after_index` names an earlier item whose
        prompt this one shares. Runs them all to completion; outputs in item order."""
        req_ids: list[str] = []
        try:  # all or nothing: a bad prompt leaves no sibling queued
            for prompt, p, routing in items:
                routing = dict(routing)
                after = routing.pop("after_index", None)
                if after is not None:
                    routing["after"] = req_ids[after]
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


def _check_pooled(outputs: list[RequestOutput]) -> list[RequestOutput]:
    for out in outputs:
        if out.pooled is None:
            raise RuntimeError(f"request {out.req_id} ended without a result: {out.finish_reason} {out.error or ''}")
    return outputs


def _is_single_prompt(prompts) -> bool:
    return isinstance(prompts, str) or (isinstance(prompts, list) and bool(prompts)
                                        and all(isinstance(t, int) for t in prompts))
