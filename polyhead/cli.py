"""`polyhead`: one entry point, a plain function per subcommand."""

import argparse
import sys

from polyhead.quant.flags import add_group_size_argument


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--model", default=None,
                       help="a Hugging Face folder, a .gguf file or a known name (default: SmolLM2-135M-Instruct)")
    group.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                       help="weights and activations; auto = bfloat16 where the CPU has native bf16 (default: auto)")
    group.add_argument("--quantization", default="auto", choices=["auto", "none", "int8", "int4"],
                       help="weight storage: auto keeps a file's quantized tensors (the default model's Q4_1) and "
                       "float weights float; none = all float; int8 / int4 quantize at load (default: auto)")
    add_group_size_argument(group)
    group.add_argument("--kv-cache-memory", default="auto",
                       help="memory for the paged KV cache, e.g. 512MiB, or auto: --max-num-seqs sequences of "
                       "--max-model-len tokens of this model's keys and values, capped at 25%% of MemAvailable "
                       "and never below one sequence; pages are committed as requests use them (default: auto)")
    group.add_argument("--max-model-len", type=int, default=None,
                       help="longest prompt + output in tokens (default: the model's context)")
    group.add_argument("--max-num-seqs", type=int, default=128, help="sequences per step at most (default: 128)")
    group.add_argument("--max-num-batched-tokens", type=int, default=512,
                       help="tokens per step at most; longer prompts are prefilled in chunks (default: 512)")
    group.add_argument("--no-prefix-caching", action="store_true", help="turn off automatic prefix caching")
    group.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    group.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=FOLDER",
                       help="PEFT LoRA adapters on the model, e.g. --lora-modules sql=./sql-lora; the server serves "
                       "each as a model of that name (request model: sql)")
    group.add_argument("--max-loras", type=int, default=4,
                       help="adapters resident at once; the least recently used idle one is evicted (default: 4)")
    group.add_argument("--max-lora-rank", type=int, default=64, help="largest adapter rank accepted (default: 64)")
    group.add_argument("--policy", default="fcfs", choices=["fcfs", "priority", "fair"],
                       help="who runs next: arrival order, request priority, or fair share across tenants "
                       "and tasks (VTC); see docs/scheduling.md (default: fcfs)")
    group.add_argument("--tenant-weight", action="append", default=[], metavar="NAME=W",
                       help="fair policy: tenant NAME gets W shares (default 1); repeatable")
    group.add_argument("--task-weight", action="append", default=[], metavar="NAME=W",
                       help="fair policy: task NAME gets W shares within its tenant (default 1); repeatable")
    group.add_argument("--pooling-token-budget", type=int, default=64,
                       help="tokens per step kept for waiting classify/tag/embed requests; 0 disables (default: 64)")


def add_generation_config_argument(parser) -> None:
    parser.add_argument("--generation-config", default="auto", choices=["auto", "none"],
                        help="auto: the model folder's generation_config.json fills the sampling fields "
                        "(temperature, top_p, top_k, min_p, repetition_penalty) a request leaves unset; "
                        "none: OpenAI's defaults (default: auto)")


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    """Where each backbone's engine steps and which tasks are served (`serve` and `batch`)."""
    p.add_argument("--engine-mode", default="auto", choices=["auto", "process", "thread"],
                   help="step each backbone's engine in its own child process or on a thread of the server "
                   "process; auto: decoders in a child process, encoders (e.g. the embedding model) on a "
                   "thread, what measured best; see BENCHMARKS.md (default: auto)")
    p.add_argument("--tasks", default=None, metavar="MANIFEST",
                   help="serve the tasks of a tasks.yaml manifest, or `default` for the shipped set (chat, "
                   "summarize, translate, sentiment, topic, embed); each backbone gets its own engine")
    p.add_argument("--backbone-kv-cache-memory", action="append", metavar="NAME=SIZE",
                   help="KV cache for one backbone of the manifest, a size or auto (repeatable; others get "
                   "--kv-cache-memory)")
    p.add_argument("--backbone-engine-mode", action="append", metavar="NAME=MODE",
                   help="thread, process or auto for one backbone of the manifest (repeatable; others get "
                   "--engine-mode)")
    p.add_argument("--backbone-threads", action="append", metavar="NAME=N",
                   help="torch threads for a backbone of the manifest other than --model (repeatable; "
                   "default 1, so a small second backbone does not contend for the cores of the first)")


def default_state_dir() -> str:
    import os

    return os.path.join(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "polyhead")


def engine_config(args):
    from polyhead.config import EngineConfig

    return EngineConfig(model=args.model, dtype=args.dtype, quantization=args.quantization,
                        quantization_group_size=args.group_size, kv_cache_memory=args.kv_cache_memory,
                        max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                        max_num_batched_tokens=args.max_num_batched_tokens,
                        enable_prefix_caching=not args.no_prefix_caching, num_threads=args.threads,
                        max_loras=args.max_loras, max_lora_rank=args.max_lora_rank,
                        adapters=parse_lora_modules(args.lora_modules),
                        policy=args.policy, tenant_weights=parse_weights(args.tenant_weight, "--tenant-weight"),
                        task_weights=parse_weights(args.task_weight, "--task-weight"),
                        pooling_token_budget=args.pooling_token_budget)


def parse_weights(items: list[str], flag: str) -> dict[str, float]:
    """["alice=2", "bob=0.5"] -> {"alice": 2.0, "bob": 0.5}; a malformed item is a ValueError naming the flag."""
    weights = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"{flag} takes NAME=WEIGHT (e.g. {flag} alice=2), got {item!r}")
    return weights


def parse_lora_modules(items: list[str]) -> dict[str, str]:
    adapters = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--lora-modules takes NAME=FOLDER, got {item!r}")
        adapters[name] = folder
    return adapters


def run(args) -> int:
    """Answer one prompt, streaming the reply to the terminal."""
    from polyhead.engine.core.params import SamplingParams
    from polyhead.llm import LLM

    llm = LLM.from_config(engine_config(args))
    sampling, source = run_sampling(args, llm.engine.info.folder)
    params = SamplingParams(**sampling, max_tokens=args.max_tokens, seed=args.seed)
    if args.verbose:
        settings = ", ".join(f"{name}={value}" for name, value in sampling.items())
        print(f"polyhead: sampling {settings}, max_tokens={args.max_tokens}, seed={args.seed} ({source})",
              file=sys.stderr, flush=True)
    prompt = args.prompt
    if not args.raw:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        prompt = llm.apply_chat_template(messages + [{"role": "user", "content": args.prompt}])
    for out in llm.stream(prompt, params, adapter=args.adapter):
        sys.stdout.write(out.new_text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def run_sampling(args, model_folder: str) -> tuple[dict, str]:
    """`polyhead run`'s sampling: the flags given, over the model's generation_config.json (auto),
    over polyhead's RUN_DEFAULTS; --greedy is temperature 0. Returns it and where it came from."""
    from polyhead.models.generation_config import RUN_DEFAULTS, read_generation_defaults

    from_model = read_generation_defaults(model_folder, args.generation_config)
    given = {"temperature": 0.0 if args.greedy else args.temperature, "top_p": args.top_p, "top_k": args.top_k,
             "min_p": args.min_p, "repetition_penalty": args.repetition_penalty}
    given = {name: value for name, value in given.items() if value is not None}
    source = ("the model's generation_config.json" if from_model else "polyhead's defaults for run")
    if given:
        source = f"flags, then {source}"
    return {**RUN_DEFAULTS, **from_model, **given}, source


def serve(args) -> int:
    """Serve the OpenAI-compatible HTTP API until interrupted (SIGTERM drains, then stops)."""
    from polyhead.deploy.flags import wants_ray
    from polyhead.server.run import ConnectionSettings
    from polyhead.server.run import serve as run_server

    settings = server_settings(args)
    if wants_ray(args):
        from polyhead.deploy.launch import serve_on_ray

        return serve_on_ray(args, settings)
    connections = ConnectionSettings(grace_s=args.shutdown_grace, header_timeout_s=args.header_read_timeout,
                                     keep_alive_s=args.timeout_keep_alive, limit_concurrency=args.limit_concurrency)
    registry = build_task_registry(args, settings.model_names[0])
    for name, backbone in registry.backbones.items():
        summary = backbone.engine.info.kv_cache_summary
        if summary is not None:
            print(f"polyhead: {name}: {summary}", file=sys.stderr, flush=True)
    run_server(registry.backbones[registry.default_backbone].engine, settings, args.host, args.port,
               connections, registry, root_path=args.root_path.rstrip("/"))
    return 0


def server_settings(args):
    """The app's settings from the `serve` flags (one machine or Ray Serve alike)."""
    import os

    from polyhead.models.registry import DEFAULT_MODEL
    from polyhead.server.app import ServerSettings

    return ServerSettings(
        model_names=[args.served_model_name or args.model or DEFAULT_MODEL],
        lora_names=list(parse_lora_modules(args.lora_modules)),
        api_key=args.api_key or os.environ.get("POLYHEAD_API_KEY"), default_max_tokens=args.default_max_tokens,
        max_queued_requests=args.max_queued_requests, max_queued_tokens=args.max_queued_tokens,
        request_timeout_s=args.request_timeout, max_request_bytes=args.max_request_bytes,
        body_read_timeout_s=args.body_read_timeout, max_inputs_per_request=args.max_inputs_per_request,
        generation_config=args.generation_config,
        max_documents_per_request=args.max_documents_per_request, state_dir=args.state_dir,
        max_file_bytes=args.max_file_bytes, max_batch_concurrency=args.max_batch_concurrency,
        web=not args.no_web)


def build_task_registry(args, default_name: str):
    """One engine per backbone the manifest names (the default model's alone without --tasks)."""
    from polyhead.server.backbones import BackbonePlan

    return BackbonePlan.from_args(args, engine_config(args), default_name).build_registry()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyhead", description="A multi-task LLM engine: many tasks on one shared backbone, "
        "continuously batched.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("run", help="answer one prompt, streaming tokens to the terminal",
                            description="Answer one prompt with the model's chat template, streaming the reply.")
    p.add_argument("prompt", help="the user message (or the raw prompt with --raw)")
    p.add_argument("--system", default=None, help="a system message to put before the prompt")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens at most (default: 256)")
    sampling = p.add_argument_group("sampling", "unset: the model's generation_config.json (--generation-config "
                                    "auto), else temperature 0.7, top_p 0.9, repetition_penalty 1.1")
    sampling.add_argument("--greedy", action="store_true", help="always the most likely token (temperature 0)")
    sampling.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    sampling.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    sampling.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (0: all)")
    sampling.add_argument("--min-p", type=float, default=None, help="drop tokens below min_p * the top probability")
    sampling.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeats")
    sampling.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    add_generation_config_argument(sampling)
    p.add_argument("--verbose", action="store_true", help="print the sampling settings used to stderr")
    p.add_argument("--adapter", default=None, help="answer with this LoRA adapter (one of --lora-modules)")
    add_engine_args(p)
    p.set_defaults(func=run)

    p = commands.add_parser("serve", help="serve the OpenAI-compatible HTTP API",
                            description="Serve /v1/completions, /v1/chat/completions, /v1/models and /health; "
                            "with --tasks also /v1/classify, /v1/tag, /v1/embeddings and /v1/tasks.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=None, help="require this bearer key on /v1 (or set POLYHEAD_API_KEY)")
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: the model's)")
    p.add_argument("--no-web", action="store_true",
                   help="do not serve the web playground and dashboard at GET / (docs/web.md)")
    p.add_argument("--root-path", default="",
                   help="the path prefix a reverse proxy serves polyhead under and strips, e.g. /polyhead "
                   "(uvicorn's root_path; the page and the API work behind it)")
    p.add_argument("--default-max-tokens", type=int, default=256, help="when a request sets none (default: 256)")
    p.add_argument("--state-dir", default=default_state_dir(),
                   help="where /v1/files uploads and /v1/batches jobs are kept; a job running when the server stops "
                   "resumes at the next start (default: $XDG_STATE_HOME/polyhead, else ~/.local/state/polyhead)")
    p.add_argument("--max-batch-concurrency", type=int, default=64,
                   help="lines of one /v1/batches job in flight at once, queued beside online requests (default: 64)")
    add_backbone_args(p)
    add_generation_config_argument(p)
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-queued-requests", type=int, default=256,
                        help="requests waiting for their first token before new ones get 429 (default: 256)")
    limits.add_argument("--max-queued-tokens", type=int, default=262_144,
                        help="prompt tokens waiting before new requests get 429 (default: 262144)")
    limits.add_argument("--request-timeout", type=float, default=600.0,
                        help="seconds a request may take before it is aborted with 408 (default: 600)")
    limits.add_argument("--max-request-bytes", type=int, default=1 << 20,
                        help="request bodies larger than this get 413, chunked ones too, counted as they arrive "
                        "(default: 1048576)")
    limits.add_argument("--body-read-timeout", type=float, default=30.0,
                        help="seconds a request body may take to arrive in full before 408 (default: 30)")
    limits.add_argument("--header-read-timeout", type=float, default=10.0,
                        help="seconds a connection may take to send a request's line and headers before it is "
                        "closed, against slowloris clients (default: 10)")
    limits.add_argument("--timeout-keep-alive", type=float, default=5.0,
                        help="seconds an idle keep-alive connection stays open (uvicorn's; default: 5)")
    limits.add_argument("--limit-concurrency", type=int, default=None,
                        help="open connections plus running requests beyond which new requests get 503 "
                        "(uvicorn's; default: no limit)")
    limits.add_argument("--max-inputs-per-request", type=int, default=64,
                        help="inputs in one classify/tag/embeddings request before 413 (default: 64)")
    limits.add_argument("--max-file-bytes", type=int, default=200 << 20,
                        help="uploads to /v1/files larger than this get 413 (default: 209715200, OpenAI's 200 MB)")
    limits.add_argument("--max-documents-per-request", type=int, default=128,
                        help="documents (text_2 items) in one rerank/score request before 413 (default: 128)")
    limits.add_argument("--shutdown-grace", type=float, default=30.0,
                        help="seconds in-flight requests may finish after SIGTERM (default: 30)")
    add_engine_args(p)
    from polyhead.deploy.flags import add_scale_out_args

    add_scale_out_args(p)
    p.set_defaults(func=serve)

    from polyhead.train.entry import add_parsers as add_train_parsers

    add_train_parsers(commands)

    from polyhead.compress.cli import add_prune_parser, add_quantize_parser

    add_prune_parser(commands)
    add_quantize_parser(commands)

    from polyhead.batch.command import add_batch_parser

    add_batch_parser(commands)

    from polyhead.bench.agreement import add_agreement_parser
    from polyhead.bench.batch import add_batch_bench_parser
    from polyhead.bench.mixed import add_mixed_parser
    from polyhead.bench.offline import add_offline_parser
    from polyhead.bench.perplexity import add_perplexity_parser
    from polyhead.bench.routing import add_routing_parser
    from polyhead.bench.serve import add_serve_parser
    from polyhead.bench.structured import add_structured_parser

    bench = commands.add_parser("bench", help="measure polyhead (and its peers) on this machine")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    add_offline_parser(bench_commands)
    add_serve_parser(bench_commands)
    add_mixed_parser(bench_commands)
    add_perplexity_parser(bench_commands)
    add_agreement_parser(bench_commands)
    add_structured_parser(bench_commands)
    add_batch_bench_parser(bench_commands)
    add_routing_parser(bench_commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except ValueError as err:  # bad input: say what and which limit, without a traceback
        print(f"polyhead: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
