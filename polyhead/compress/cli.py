"""The `polyhead prune` and `polyhead quantize` subcommands: their arguments here (no torch at import,
so `polyhead --help` stays fast), their work in prune.py and quantize.py."""

import argparse

DEFAULT_SEQ_LEN = 256  # wanda: tokens per calibration sequence
DEFAULT_CALIBRATION_TOKENS = 2048  # wanda: calibration tokens at most


def run_prune(args) -> int:
    from polyhead.compress.prune import run_prune as run

    return run(args)


def run_quantize(args) -> int:
    from polyhead.compress.quantize import run_quantize as run

    return run(args)


def add_prune_parser(commands) -> None:
    p = commands.add_parser(
        "prune", help="prune a model into a new Hugging Face folder (structured, unstructured or N:M)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prune MODEL and write a Hugging Face folder (config.json + tokenizer + model.safetensors).\n\n"
        "  --structured mlp=R,heads=R  removes whole MLP channels and query heads: smaller matrices, faster.\n"
        "                              Key/value heads are kept; query heads go in equal numbers from every\n"
        "                              GQA group. Per-layer sizes are in config.json's polyhead_pruning block.\n"
        "  --unstructured R            zeros a fraction R of every weight row; shapes stay dense (for\n"
        "                              quality studies: no speed-up).\n"
        "  --semi-structured N:M       zeros N of every M consecutive weights (2:4); dense shapes, no speed-up.\n\n"
        "magnitude scores weights by |W|; wanda by |W| * the L2 norm of their input over calibration text.\n"
        "example: polyhead prune --method wanda --structured mlp=0.25,heads=0.25 --output smol-pruned")
    p.add_argument("model", nargs="?", default=None,
                   help="a Hugging Face folder, a .gguf file or a known name (default: SmolLM2-135M-Instruct)")
    p.add_argument("--method", default="wanda", choices=["magnitude", "wanda"], help="scores (default: wanda)")
    p.add_argument("--structured", default=None, metavar="mlp=R,heads=R",
                   help="fractions of MLP channels and query heads removed, each in [0, 1)")
    p.add_argument("--allocation", default="uniform", choices=["uniform", "global"],
                   help="structured: the same fraction in every layer, or scores (normalized per layer) decide "
                   "each layer's size; uniform folders load in transformers as they are (default: uniform)")
    p.add_argument("--unstructured", type=float, default=None, metavar="R",
                   help="fraction in [0, 1) of each weight row zeroed (dense shapes)")
    p.add_argument("--semi-structured", default=None, metavar="N:M", help="N zeros in every M weights, e.g. 2:4")
    p.add_argument("--output", required=True, metavar="DIR", help="the folder to write (new or empty)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="wanda: a plain-text file (default: the text shipped in polyhead/compress/calibration.txt)")
    p.add_argument("--calibration-tokens", type=int, default=DEFAULT_CALIBRATION_TOKENS,
                   help=f"wanda: calibration tokens at most (default: {DEFAULT_CALIBRATION_TOKENS})")
    p.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN,
                   help=f"wanda: tokens per calibration sequence (default: {DEFAULT_SEQ_LEN})")
    p.set_defaults(func=run_prune)


def add_quantize_parser(commands) -> None:
    p = commands.add_parser(
        "quantize", help="quantize a model's weights to int8 or int4 into a new folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Quantize MODEL's weight matrices (every linear, the LM head and the embedding) and write a\n"
        "folder that run / serve / bench / LLM(...) load as it is. Activations stay float32/bfloat16.\n\n"
        "  int8  symmetric, one scale per --group-size weights (Q8_0-like) or per output channel (channel)\n"
        "  int4  one scale per --group-size weights (Q4_0-like), or a scale and a min (--asymmetric, Q4_1-like);\n"
        "        the embedding (and a tied LM head) stays int8 per 32, as llama.cpp's 4-bit files keep it\n\n"
        "example: polyhead quantize --method int4 --group-size 64 --output smol-int4")
    p.add_argument("model", nargs="?", default=None,
                   help="a Hugging Face folder, a .gguf file or a known name (default: SmolLM2-135M-Instruct)")
    p.add_argument("--method", required=True, choices=["int8", "int4"], help="bits per weight")
    p.add_argument("--group-size", default="32", choices=["32", "64", "128", "channel"],
                   help="weights sharing one scale; channel: one per output channel, int8 only (default: 32)")
    p.add_argument("--asymmetric", action="store_true", help="int4: a min per group besides the scale")
    p.add_argument("--output", required=True, metavar="DIR", help="the folder to write (new or empty)")
    p.set_defaults(func=run_quantize)
