"""`python -m polyhead.train CONFIG [...]`: the entry torchrun runs on every rank, e.g.
`torchrun --nproc-per-node 2 -m polyhead.train examples/multitask.yaml`."""

import argparse
import sys

from polyhead.train.entry import add_train_arguments, train_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polyhead.train",
                                     description="Multi-task training (one process; torchrun runs one per rank).")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return train_command(args)
    except ValueError as err:
        print(f"polyhead train: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
