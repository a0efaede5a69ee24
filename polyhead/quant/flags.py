"""The command-line spelling of quantization settings, shared by every command that builds an
engine (no torch at import: `polyhead --help` stays fast)."""

import argparse

GROUP_SIZE_METAVAR = "{32,64,128,channel}"
GROUP_SIZE_HELP = ("int8 / int4: weights sharing one scale, or channel: one per output channel (int8); "
                   "32 keeps int8 within ~49 of 64 greedy tokens of float32, channel ~30 (default: 32)")


def parse_group_size(value: str) -> int | None:
    """"32" | "64" | "128" -> that int; "channel" -> None (one scale per output channel)."""
    if value == "channel":
        return None
    if value not in ("32", "64", "128"):
        raise argparse.ArgumentTypeError(f"must be 32, 64, 128 or channel, got {value!r}")
    return int(value)


def add_group_size_argument(parser) -> None:
    parser.add_argument("--group-size", type=parse_group_size, default=32, metavar=GROUP_SIZE_METAVAR,
                        help=GROUP_SIZE_HELP)
