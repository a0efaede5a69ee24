"""How each backbone's engine is built from the serve flags: its config, where it steps, its tasks.

A `BackbonePlan` is plain data, so the same plan builds the engines of one `polyhead serve` and,
sent to a Ray replica (polyhead/deploy), the one engine each replica owns: one code path.
"""

from dataclasses import dataclass, field, replace

from polyhead.config import EngineConfig, parse_size
from polyhead.tasks.spec import TaskSpec


@dataclass
class BackbonePlan:
    base: EngineConfig  # the default backbone's (--model and the engine flags)
    default_name: str  # the default backbone's served name
    engine_mode: str = "auto"  # --engine-mode: auto | process | thread
    tasks: str | None = None  # --tasks: a manifest path or `default`; None: the model alone
    kv_budgets: dict[str, object] = field(default_factory=dict)  # backbone -> KV size (--backbone-kv-cache-memory)
    thread_budgets: dict[str, int] = field(default_factory=dict)  # backbone -> torch threads (--backbone-threads)
    engine_modes: dict[str, str] = field(default_factory=dict)  # backbone -> engine mode (--backbone-engine-mode)

    @classmethod
    def from_args(cls, args, base: EngineConfig, default_name: str) -> "BackbonePlan":
        """From `serve`/`batch` flags; a malformed NAME=VALUE item is a ValueError naming its flag."""
        kv_budgets = {}
        for item in args.backbone_kv_cache_memory or []:
            name, sep, size = item.rpartition("=")
            if not sep or not name:
                raise ValueError(f"--backbone-kv-cache-memory takes NAME=SIZE (e.g. all-MiniLM-L6-v2=64MiB), "
                                 f"got {item!r}")
            kv_budgets[name] = parse_size(size, f"--backbone-kv-cache-memory {name}", allow_auto=True)
        thread_budgets = {}
        for item in args.backbone_threads or []:
            name, sep, count = item.rpartition("=")
            if not sep or not name or not count.isdigit() or int(count) < 1:
                raise ValueError(f"--backbone-threads takes NAME=N with N >= 1 (e.g. all-MiniLM-L6-v2=2), "
                                 f"got {item!r}")
            thread_budgets[name] = int(count)
        engine_modes = {}
        for item in args.backbone_engine_mode or []:
            name, sep, mode = item.rpartition("=")
            if not sep or not name or mode not in ("auto", "thread", "process"):
                raise ValueError(f"--backbone-engine-mode takes NAME=auto|thread|process "
                                 f"(e.g. all-MiniLM-L6-v2=process), got {item!r}")
            engine_modes[name] = mode
        return cls(base, default_name, args.engine_mode, args.tasks, kv_budgets, thread_budgets, engine_modes)

    def specs(self) -> list[TaskSpec]:
        """The manifest's tasks ([] without --tasks)."""
        if not self.tasks:
            return []
        from polyhead.tasks.default import resolve_manifest
        from polyhead.tasks.manifest import load_manifest

        return load_manifest(resolve_manifest(self.tasks))

    def backbone_names(self) -> list[str]:
        """Every backbone served, the default first (the order /v1/models lists them)."""
        names = [self.default_name]
        for spec in self.specs():
            if (spec.backbone or self.default_name) not in names:
                names.append(spec.backbone)
        return names

    def config_for(self, name: str) -> EngineConfig:
        kv_cache_memory = self.kv_budgets.get(name, self.base.kv_cache_memory)
        if name == self.default_name:
            return replace(self.base, kv_cache_memory=kv_cache_memory)
        # another backbone: its own context length (an encoder's is its max_seq_length); --lora-modules
        # adapters are for the default backbone (a task's own adapter is registered on its backbone).
        # One thread unless told otherwise: each engine loop runs its own OpenMP team, and a second
        # team spinning on the cores the default backbone's steps use stalled them (quiet 2-core
        # machine, 16 chat streams + classify + embed: chat TPOT p50 125 -> 63 ms with the embedding
        # backbone on one thread; BENCHMARKS.md, mixed workload).
        return replace(self.base, model=name, max_model_len=None, adapters={}, kv_cache_memory=kv_cache_memory,
                       num_threads=self.thread_budgets.get(name, 1))

    def start_engine(self, name: str, digest_period_s: float | None = None):
        """Build and start the engine client of one backbone. digest_period_s: how often a child
        engine process sends its cache digest (a Ray replica's router reads it; None: never)."""
        from polyhead.models.registry import is_encoder_model

        config = self.config_for(name)
        # auto: a decoder's step loop runs Python between its kernels every step; in its own process
        # it does not take turns on one GIL with the HTTP event loop (BENCHMARKS.md: 1.20x tok/s at 32
        # clients). An encoder's steps are single forwards: in a child process the mixed workload ran
        # the same (goodput 15.38 req/s either way) for ~300 MB more resident memory, so it stays here.
        mode = self.engine_modes.get(name, self.engine_mode)
        if mode == "auto":
            mode = "thread" if is_encoder_model(config.model) else "process"
        if mode == "process":
            from polyhead.engine.client.process_engine import ProcessEngine

            return ProcessEngine.from_config(config, digest_period_s)
        # imported only here: with every engine in a child process, this one never loads torch
        from polyhead.engine.client.async_engine import AsyncEngine

        return AsyncEngine.from_config(config)

    def build_registry(self, make_engine=None):
        """One engine per backbone the manifest names (the default model's alone without --tasks).
        make_engine(name) builds a backbone's engine client (default: start_engine)."""
        from polyhead.server.registry import TaskRegistry

        make_engine = make_engine or self.start_engine

        def engine_for(model: str | None):
            return make_engine(self.default_name if model is None else model)

        specs = self.specs()
        if not specs:
            return TaskRegistry.single(engine_for(None), self.default_name)
        return TaskRegistry.from_specs(specs, engine_for, self.default_name)
