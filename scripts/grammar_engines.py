"""llguidance vs xgrammar on the default model's tokenizer: what chose polyhead's grammar engine.

Measures, for each engine: the tokenizer's conversion (once per backbone), the compile of a
20-field JSON schema (a fresh cache each trial; the first mask included, as llguidance builds its
lexer lazily), and the per-step mask time at 1 and 32 rows while each row's matcher is driven
token by token through a valid 20-field document. Both use the same JSON layout (", " and ": ",
no other whitespace). xgrammar is not a polyhead dependency; to run this:

    pip install --no-deps xgrammar==0.2.9 apache-tvm-ffi
    python scripts/grammar_engines.py [--trials 20] [--rows 1,32]
"""

import argparse
import json
import platform
import statistics
import time
from datetime import date

import torch

from polyhead.bench.structured import twenty_field_instance, twenty_field_schema
from polyhead.engine.decoder.grammar_source import JSON_LAYOUT


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer, vocab_size: int, eos: list[int]):
        import llguidance
        import llguidance.hf

        self.llguidance = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
        self.executor = llguidance.LLExecutor()
        self.words = -(-vocab_size // 32)

    def compile(self, schema: str):
        grammar = self.llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_LAYOUT)
        return self.llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)

    def matchers(self, compiled, num: int) -> list:
        return [compiled.deep_copy() for _ in range(num)]

    def fill(self, matchers: list, bitmask: torch.Tensor) -> None:
        if len(matchers) == 1:
            matchers[0].unsafe_compute_mask_ptr(bitmask.data_ptr(), self.words * 4)
        else:
            self.executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(matchers)], bitmask.data_ptr(),
                                                  self.words * 4, len(matchers))

    def accept(self, matchers: list, token: int) -> None:
        for matcher in matchers:
            assert matcher.consume_token(token), matcher.get_error()


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer, vocab_size: int, eos: list[int]):
        import xgrammar

        self.xgrammar = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=eos)
        self.batch = xgrammar.BatchGrammarMatcher()

    def compile(self, schema: str):
        compiler = self.xgrammar.GrammarCompiler(self.info, cache_enabled=False)
        compiled = compiler.compile_json_schema(schema, any_whitespace=False, separators=(", ", ": "))
        return self.xgrammar.GrammarMatcher(compiled), compiled

    def matchers(self, compiled, num: int) -> list:
        return [self.xgrammar.GrammarMatcher(compiled[1]) for _ in range(num)]

    def fill(self, matchers: list, bitmask: torch.Tensor) -> None:
        if len(matchers) == 1:
            matchers[0].fill_next_token_bitmask(bitmask, 0)
        else:
            self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def accept(self, matchers: list, token: int) -> None:
        for matcher in matchers:
            assert matcher.accept_token(token)


def measure(engine_cls, tokenizer, vocab_size: int, eos: list[int], document: list[int], args) -> dict:
    start = time.perf_counter()
    engine = engine_cls(tokenizer, vocab_size, eos)
    tokenizer_s = time.perf_counter() - start
    schema = json.dumps(twenty_field_schema())
    bitmask = torch.zeros(max(args.rows), -(-vocab_size // 32), dtype=torch.int32)
    compiles = []
    for _ in range(args.trials):
        start = time.perf_counter()
        compiled = engine.compile(schema)
        first = engine.matchers(compiled, 1)
        engine.fill(first, bitmask[:1])
        compiles.append(time.perf_counter() - start)
    result = {"engine": engine.name, "tokenizer_s": tokenizer_s, "compile_s": statistics.median(compiles)}
    for num in args.rows:
        matchers = engine.matchers(compiled, num)
        times = []
        for token in document:
            start = time.perf_counter()
            engine.fill(matchers, bitmask[:num])
            times.append(time.perf_counter() - start)
            engine.accept(matchers, token)
        result[f"mask_{num}_s"] = statistics.mean(times)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="compiles per engine (default: 20)")
    parser.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32])
    args = parser.parse_args()

    from polyhead.models.loader import load_model

    loaded = load_model(None, torch.float32)
    tokenizer, vocab_size, eos = loaded.tokenizer, loaded.config.vocab_size, list(loaded.config.eos_token_ids)
    document = tokenizer.encode(json.dumps(twenty_field_instance(), separators=(", ", ": ")), add_special_tokens=False)
    results = [measure(cls, tokenizer, vocab_size, eos, document, args) for cls in (Llguidance, Xgrammar)]
    print(f"\nSmolLM2-135M-Instruct tokenizer ({vocab_size} tokens), 20-field JSON schema, {len(document)}-token "
          f"document, {torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()}, "
          f"{date.today()}")
    print("| engine | tokenizer conversion (ms) | compile + first mask (ms, median) | "
          + " | ".join(f"mask per step, {n} rows (ms)" for n in args.rows) + " |")
    print("|---|---|---|" + "---|" * len(args.rows))
    for r in results:
        masks = " | ".join(f"{r[f'mask_{n}_s'] * 1e3:.3f}" for n in args.rows)
        print(f"| {r['engine']} | {r['tokenizer_s'] * 1e3:.0f} | {r['compile_s'] * 1e3:.2f} | {masks} |")
    rows = ",".join(map(str, args.rows))
    print(f"command: python scripts/grammar_engines.py --trials {args.trials} --rows {rows}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
