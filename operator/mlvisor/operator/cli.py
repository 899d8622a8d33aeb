"""The ``mlvisor`` command.

Each subcommand lives beside the code it drives and registers itself through a
``register(subparsers)`` function; this module only assembles them, importing each lazily
so that ``mlvisor --version`` or ``mlvisor validate`` never pays for sklearn or kopf.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import version as _dist_version

#: module path -> the subcommands it registers (for lazy loading and the help text).
SUBCOMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "mlvisor.operator.resources_cli": ("crds", "validate"),
    "mlvisor.trainer.cli": ("train",),
    "mlvisor.server.cli": ("serve",),
    "mlvisor.operator.local.cli": ("run",),
    "mlvisor.operator.local.logs": ("logs",),
    "mlvisor.operator.local.trials": ("trials",),
    "mlvisor.operator.kube.cli": ("operator",),
    "mlvisor.operator.upload": ("upload",),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlvisor",
        description="Train and serve scikit-learn models, supervised like Erlang/OTP.",
    )
    parser.add_argument("--version", action="version", version=f"mlvisor {_dist_version('mlvisor')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, commands in SUBCOMMAND_MODULES.items():
        if only is not None and only not in commands:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # a real missing dependency inside the module: say so
                raise
            continue  # not built yet
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in args_list if not a.startswith("-")), None)
    known = {c for cs in SUBCOMMAND_MODULES.values() for c in cs}
    parser = build_parser(only=first if first in known else None)
    args = parser.parse_args(args_list)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
