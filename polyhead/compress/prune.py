"""`polyhead prune`: a model in, a smaller (structured) or sparser (unstructured, N:M) Hugging Face
folder out. Structured pruning really shrinks the matrices; polyhead's loader and the engine read
the per-layer sizes from the folder's config, and `polyhead train` (distill) loads it as a student."""

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from polyhead.compress.calibration import (
    ActivationNorms,
    collect_activation_norms,
    read_calibration_text,
    token_sequences,
)
from polyhead.compress.cli import DEFAULT_CALIBRATION_TOKENS, DEFAULT_SEQ_LEN
from polyhead.compress.folder import (
    check_output_folder,
    pruning_block,
    write_pruned_folder,
)
from polyhead.compress.sparse import apply_sparse
from polyhead.compress.spec import PruneSpec, parse_n_m, parse_structured
from polyhead.compress.structured import StructuredPlan, apply_structured, plan_structured
from polyhead.models.loader import read_float_weights


@dataclass
class PruneResult:
    folder: Path  # the written model
    intermediate_sizes: list[int]  # per layer, after pruning
    num_heads: list[int]  # query heads per layer, after pruning
    num_parameters: tuple[int, int]  # (before, after), tensors in the safetensors file
    num_zeros: int  # weights that are exactly zero after pruning (unstructured / N:M)
    calibration_tokens: int  # 0 for magnitude
    plan: StructuredPlan | None = None  # structured: the channels and heads each layer kept


def prune_model(model: str | None, spec: PruneSpec, output: str | Path, calibration: str | Path | None = None,
                seq_len: int = DEFAULT_SEQ_LEN, max_tokens: int = DEFAULT_CALIBRATION_TOKENS) -> PruneResult:
    from polyhead.models.loader import load_model

    check_output_folder(output)  # before the slow part
    loaded = load_model(model, torch.float32)
    config = loaded.config
    norms = plan = None
    if spec.method == "wanda":
        text = read_calibration_text(calibration)
        norms = collect_activation_norms(loaded.model, token_sequences(loaded.tokenizer, text, seq_len, max_tokens))
    state = read_float_weights(loaded.folder)
    before = sum(t.numel() for t in state.values())
    info = {"mode": spec.mode, **{k: v for k, v in asdict(spec).items() if v not in (None, 0.0)
                                  and (spec.is_structured or k != "allocation")},
            "calibration_tokens": norms.num_tokens if norms else 0}
    if spec.is_structured:
        plan = plan_structured(state, config, spec, norms)
        state = apply_structured(state, config, plan)
        sizes, heads = [len(c) for c in plan.channels], [len(h) for h in plan.heads]
    else:
        state = apply_sparse(state, config, spec, norms)
        sizes, heads = list(config.intermediate_sizes), list(config.layer_num_heads)
    block = pruning_block(config, sizes, heads, **info)
    folder = write_pruned_folder(loaded.folder, output, state, block, config.head_dim)
    zeros = sum(int((t == 0).sum()) for k, t in state.items() if ".layers." in k)
    return PruneResult(folder, sizes, heads, (before, sum(t.numel() for t in state.values())), zeros,
                       norms.num_tokens if norms else 0, plan)


def spec_from_args(args) -> PruneSpec:
    structured = parse_structured(args.structured)
    return PruneSpec(method=args.method, mlp=structured.get("mlp", 0.0), heads=structured.get("heads", 0.0),
                     allocation=args.allocation, unstructured=args.unstructured or 0.0,
                     n_m=parse_n_m(args.semi_structured))


def run_prune(args) -> int:
    """Prune MODEL and write the result to --output."""
    spec = spec_from_args(args)
    if args.seq_len < 2 or args.calibration_tokens < 2:
        raise ValueError("--seq-len and --calibration-tokens must be >= 2")
    start = time.perf_counter()
    result = prune_model(args.model, spec, args.output, args.calibration, args.seq_len, args.calibration_tokens)
    before, after = result.num_parameters
    print(f"wrote {result.folder} in {time.perf_counter() - start:.1f} s ({spec.mode}, {spec.method}"
          + (f", {result.calibration_tokens} calibration tokens" if result.calibration_tokens else "") + ")")
    print(f"parameters: {before:,} -> {after:,} ({after / before:.1%})")
    if not spec.is_structured:
        print(f"zero weights in the layers: {result.num_zeros:,}")
    else:
        print(f"MLP channels per layer: {result.intermediate_sizes}")
        print(f"query heads per layer:  {result.num_heads}")
    return 0


__all__ = ["ActivationNorms", "PruneResult", "PruneSpec", "prune_model", "run_prune"]
