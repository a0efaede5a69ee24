"""Structured outputs on the decoder backbone: grammars compiled off the step loop, a matcher per
request, and each step's allowed-token masks for the sampler.

The rule it keeps: a request's matcher has consumed exactly its output tokens, in order, each once.
`advance` catches the matcher up from `output_token_ids` (never from "this step's token"), so a
request preempted and recomputed, whose tokens stay, is never advanced twice.

As adapters load (lora/manager.py), grammars compile on a worker thread: the scheduler asks
`is_ready` for a waiting request, the first ask starts the compile (and, once per backbone, the
tokenizer's conversion), and the request keeps its place until a later step finds it done.
Compiled grammars are cached by their StructuredOutput; each request gets its own copy.
"""

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import llguidance
import llguidance.hf
import numpy as np

from polyhead.engine.core.params import StructuredOutput
from polyhead.engine.core.request import Request
from polyhead.engine.decoder.grammar_source import GRAMMAR_ERROR_PREFIX, grammar_source, short_error

logger = logging.getLogger(__name__)

MAX_CACHED_GRAMMARS = 256  # compiled grammars kept, least recently used dropped first


@dataclass(slots=True)
class _RequestMatcher:
    matcher: llguidance.LLMatcher
    num_consumed: int  # output tokens consumed so far: those before it are never fed again


class GrammarManager:
    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: frozenset[int]):
        self._hf_tokenizer = tokenizer
        self.vocab_size = vocab_size  # the width of the logits, which the masks cover
        self._eos_token_ids = sorted(eos_token_ids)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polyhead-grammar")
        self._parallel = llguidance.LLExecutor()  # fills many rows' masks on its own threads
        # masks are computed here while the forward runs (both release the GIL), read before sampling
        self._mask_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polyhead-grammar-mask")
        self._lock = threading.Lock()
        self._tokenizer: Future | None = None  # the llguidance tokenizer, converted once, on first use
        self._compiled: OrderedDict[StructuredOutput, Future] = OrderedDict()  # -> Future[LLMatcher]
        self._matchers: dict[str, _RequestMatcher] = {}  # req_id -> its matcher
        self.failed: dict[str, str] = {}  # req_id -> why its grammar did not compile (taken by the backend)
        self.num_compiles = 0  # grammars compiled (cache misses), for tests and metrics

    # --- before a request runs ----------------------------------------------------------------------
    def is_ready(self, request: Request) -> bool:
        """Can this request be scheduled now? Free text always; a constrained one once its grammar
        has compiled (the first ask starts the compile). A failed compile is recorded in `failed`."""
        structured = None if request.is_pooling else request.params.structured
        if structured is None or request.req_id in self._matchers:
            return True
        future = self._compile(structured)
        if not future.done():
            return False
        error = future.exception()
        if error is not None:
            self.failed[request.req_id] = f"{GRAMMAR_ERROR_PREFIX} {structured.kind} cannot be compiled: {error}"
            return False
        matcher = future.result().deep_copy()
        state = self._matchers[request.req_id] = _RequestMatcher(matcher, 0)
        # a continued request (its earlier output is now the end of its prompt) starts past that output
        if request.num_continued_tokens:
            state.matcher.consume_tokens(request.prompt_token_ids[-request.num_continued_tokens:])
        self.advance(request)
        return True

    def take_failed(self) -> dict[str, str]:
        failed, self.failed = self.failed, {}
        return failed

    def _compile(self, structured: StructuredOutput) -> Future:
        with self._lock:
            future = self._compiled.get(structured)
            if future is not None:
                self._compiled.move_to_end(structured)
                return future
            if self._tokenizer is None:
                self._tokenizer = self._executor.submit(self._convert_tokenizer)
            future = self._compiled[structured] = self._executor.submit(self._build, structured)
            self.num_compiles += 1
            while len(self._compiled) > MAX_CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
            return future

    def _convert_tokenizer(self) -> llguidance.LLTokenizer:
        return llguidance.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self.vocab_size,
                                            eos_token=self._eos_token_ids or None)

    def _build(self, structured: StructuredOutput) -> llguidance.LLMatcher:
        # on the worker thread: the tokenizer's future was submitted before this one, so it is done
        matcher = llguidance.LLMatcher(self._tokenizer.result(), grammar_source(structured), log_level=0)
        if matcher.is_error():
            raise ValueError(short_error(matcher.get_error()))
        return matcher

    # --- each step ----------------------------------------------------------------------------------
    def start_allowed_tokens(self, requests: list[Request]) -> Future | None:
        """allowed_tokens(requests) on the mask thread, to overlap the forward; None: no row is constrained.
        The matchers do not change meanwhile: they advance after the step, in `advance`."""
        if not any(r.req_id in self._matchers for r in requests):
            return None
        return self._mask_thread.submit(self.allowed_tokens, requests)

    def allowed_tokens(self, requests: list[Request]) -> list[np.ndarray | None]:
        """Per request, the tokens its grammar allows next ([vocab_size] bool), None where free.

        numpy, not torch: this runs on the mask thread, and one torch op on a second thread gives it
        an OpenMP team of its own, which halved the step loop's decode speed from then on (2-core
        Xeon, 1 sequence: 82 -> 41 tok/s). The sampler, on the step thread, wraps the arrays."""
        states = [self._matchers.get(r.req_id) for r in requests]  # one read each: this runs on the mask thread
        constrained = [(i, state.matcher) for i, state in enumerate(states) if state is not None]
        out: list[np.ndarray | None] = [None] * len(requests)
        if not constrained:
            return out
        words = -(-self.vocab_size // 32)
        bitmask = np.zeros((len(constrained), words), dtype=np.int32)  # [R, W]
        if len(constrained) == 1:
            constrained[0][1].unsafe_compute_mask_ptr(bitmask.ctypes.data, words * 4)
        else:
            self._parallel.unsafe_compute_mask_ptr([(matcher, j) for j, (_, matcher) in enumerate(constrained)],
                                                   bitmask.ctypes.data, words * 4, len(constrained))
        # little-endian words: token t is bit t % 8 of byte t // 8
        bits = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")  # [R, 32 * W]
        allowed = bits[:, :self.vocab_size].astype(bool)  # [R, V]
        # ignore_eos keeps going past EOS, as free text does: only the grammar's own end stops it. A
        # matcher that is not stopped can always take more than EOS, so some token stays allowed.
        keep_going = [j for j, (i, _) in enumerate(constrained) if requests[i].params.ignore_eos]
        if keep_going and self._eos_token_ids:
            allowed[np.ix_(keep_going, sorted(self._eos_token_ids))] = False
        for j, (i, _) in enumerate(constrained):
            out[i] = allowed[j]
        return out

    def advance(self, request: Request) -> str | None:
        """Feed the matcher the request's output tokens it has not seen. Returns "complete" when the
        grammar takes nothing more (the request is done), an error message (GRAMMAR_ERROR_PREFIX...)
        when the grammar failed (a limit of llguidance's hit while generating), None otherwise
        (also for a request without a grammar)."""
        state = self._matchers.get(request.req_id)
        if state is None:
            return None
        new_tokens = request.all_token_ids[request.num_prompt_tokens + state.num_consumed:]
        state.num_consumed += len(new_tokens)
        if new_tokens:
            state.matcher.consume_tokens(new_tokens)
        if state.matcher.is_error():
            return f"{GRAMMAR_ERROR_PREFIX} grammar failed while generating: {short_error(state.matcher.get_error())}"
        return "complete" if state.matcher.is_stopped() else None

    def release(self, req_id: str) -> None:
        self._matchers.pop(req_id, None)
        self.failed.pop(req_id, None)

    def clear_cache(self) -> None:
        """Forget every compiled grammar (benchmarks time a compile from scratch)."""
        with self._lock:
            self._compiled.clear()

    def wait_compiled(self, structured: StructuredOutput) -> None:
        """Compile `structured` (or find it cached) and wait for it: benchmarks and warm-ups."""
        self._compile(structured).result()
