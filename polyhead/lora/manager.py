"""Adapter residency: registered adapters (name -> folder), at most `max_loras` resident at once,
least recently used ones evicted when nobody running needs them, loading on a background thread.

The rule it keeps: the step loop never reads an adapter file. A request whose adapter is not
resident is not ready; asking starts the load on the loader thread, and the scheduler skips
the request until a later step finds the load done and a slot free.
"""

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from polyhead.lora.adapter import AdapterWeights, check_adapter, load_adapter
from polyhead.lora.layer import LoRABatch, LoRAState, attach_lora
from polyhead.models.config import ModelConfig

logger = logging.getLogger(__name__)

# (name, folder) -> AdapterWeights; the default reads the PEFT folder (tests pass one they can hold)
Loader = Callable[[str, Path], AdapterWeights]


class LoRAManager:
    def __init__(self, model: nn.Module, model_config: ModelConfig, dtype: torch.dtype, max_loras: int,
                 max_lora_rank: int, loader: Loader | None = None, in_use: Callable[[], set[str]] = set):
        self.model = model
        self.model_config = model_config
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.loader = loader or (lambda name, folder: load_adapter(name, folder, model_config, dtype, max_lora_rank))
        self.folders: dict[str, Path] = {}  # registered adapters
        self.resident: OrderedDict[str, AdapterWeights] = OrderedDict()  # least recently used first
        self.loading: dict[str, Future] = {}  # started loads, done or not, not yet resident
        self.failed: dict[str, str] = {}  # adapter -> why its load failed (until re-registered)
        self.in_use = in_use  # the adapters running requests use: never evicted
        self.state: LoRAState | None = None  # set when the first adapter is registered
        self._lock = threading.Lock()  # registration may come from another thread than the step loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polyhead-lora-load")
        self._step = 0  # forward passes run (applied() calls): the clock for staleness below
        self._asked: dict[str, int] = {}  # adapter not resident -> the step when a request last asked for it
        self.num_loads = 0  # completed loads (reloads after eviction included), for metrics and tests
        self.num_evictions = 0

    def register(self, name: str, folder: str | Path) -> None:
        """Make an adapter known by name; its config and tensor shapes are checked now (the
        safetensors header only), its weights are read when a request first needs them."""
        if not name:
            raise ValueError("adapter name must be a non-empty string")
        folder = Path(folder)
        check_adapter(folder, self.model_config, self.max_lora_rank)
        with self._lock:
            if name in self.folders and self.folders[name] != folder:
                raise ValueError(f"adapter {name!r} is already registered with folder {str(self.folders[name])!r}")
            self.folders[name] = folder
            self.failed.pop(name, None)
            if self.state is None:  # the wrappers cost a call per layer: only models that serve adapters get them
                self.state = attach_lora(self.model)

    @property
    def names(self) -> list[str]:
        return sorted(self.folders)

    def check_known(self, name: str | None) -> None:
        if name is not None and name not in self.folders:
            known = ", ".join(self.names) or "none"
            raise ValueError(f"adapter {name!r} is not registered (registered adapters: {known})")

    def is_ready(self, name: str | None) -> bool:
        """The scheduler's predicate for a waiting request's adapter: True when it is resident
        (or None: the base weights). Otherwise starts or advances its load and returns False."""
        if name is None:
            return True
        if name in self.resident:
            self.resident.move_to_end(name)
            return True
        if name in self.failed:
            return False
        self._asked[name] = self._step
        future = self.loading.get(name)
        if future is None:
            if len(self.loading) >= self.max_loras and not self._drop_one_loaded():
                return False  # loaded-but-waiting adapters are bounded too: at most max_loras of them
            self.loading[name] = self._executor.submit(self.loader, name, self.folders[name])
            return False
        if not future.done():
            return False
        try:
            weights = future.result()
        except Exception as err:  # its requests fail (the decoder backend reports them failed), the loop goes on
            logger.exception("loading adapter %r failed", name)
            del self.loading[name]
            self.failed[name] = f"{type(err).__name__}: {err}"
            return False
        if len(self.resident) >= self.max_loras and not self._evict_one():
            return False  # every slot serves a running request: wait for one to finish
        del self.loading[name]
        del self._asked[name]
        self.resident[name] = weights
        self.num_loads += 1
        logger.info("adapter %r resident (%.1f MB, max rank %d)", name, weights.num_bytes / 1e6, weights.max_rank)
        return True

    def wait_loaded(self, name: str, timeout: float | None = None) -> None:
        """Block until a started load is done (tests and warm-up; never the step loop)."""
        future = self.loading.get(name)
        if future is not None:
            future.exception(timeout)

    def _drop_one_loaded(self) -> bool:
        """Forget a finished load that no request asked for in the last two steps (its requests
        were aborted, or sit deep in the queue): asked for again, it reloads."""
        for name, future in self.loading.items():
            if future.done() and self._asked.get(name, -1) < self._step - 1:
                del self.loading[name]
                return True
        return False

    def _evict_one(self) -> bool:
        in_use = self.in_use()
        for name in self.resident:  # least recently used first
            if name not in in_use:
                del self.resident[name]
                self.num_evictions += 1
                return True
        return False

    def order_rows(self, scheduled: list) -> list:
        """A step's (request, num_new) in the order its rows are laid out: each adapter's decode
        rows, and each adapter's prefill chunks, contiguous, so its LoRA runs on views of the
        batch with no gather or scatter; decode rows first, as the attention needs."""
        if self.state is None or not self.resident:
            return scheduled
        return sorted(scheduled, key=lambda item: (item[1] != 1, item[0].adapter or ""))

    @contextmanager
    def applied(self, spans: list[tuple[int, str | None]]) -> Iterator[LoRABatch | None]:
        """Run a forward with these rows' adapters. `spans`: (rows, adapter name) per scheduled
        request in flat-batch order; every named adapter is resident (the scheduler only runs
        ready requests, and adapters of running requests are never evicted)."""
        if self.state is None:
            yield None
            return
        self._step += 1
        self.state.batch = LoRABatch.from_row_adapters(
            [(n, None if a is None else self.resident[a]) for n, a in spans])
        try:
            yield self.state.batch
        finally:
            self.state.batch = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
