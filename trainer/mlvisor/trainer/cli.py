"""``mlvisor train FILE --output DIR``: the trainer for people, same behaviour as the pods.

Registered into the ``mlvisor`` command by ``mlvisor.operator.cli``; kept free of sklearn
imports at module level so ``mlvisor --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "train",
        help="train a TrainingJob locally and write its model artifact",
        description=(
            "Train the model of a TrainingJob file. Without worker flags the whole job runs in "
            "this process (every search shard, then the select step) and the artifact path is "
            "printed. Progress goes to stderr: a line per trial of a search ('trial 7/12: #5 accuracy "
            "0.9583; best 0.9667 (#3); about 14 s left'), as text at a terminal and JSON lines "
            "otherwise (--log-format)."
        ),
        epilog="Exit codes: 0 ok; 2 invalid spec or data (do not retry); 1 crash.",
    )
    from mlvisor.trainer.entry import add_run_arguments

    add_run_arguments(parser, spec_positional=True)
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import sys

    from mlvisor.trainer.entry import execute

    if args.log_format is None and sys.stderr.isatty():
        args.log_format = "text"  # a person at a terminal: the messages, e.g. "trial 7/12: ..."
    return execute(args)
