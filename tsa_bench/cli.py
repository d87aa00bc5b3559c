"""``tsa-bench`` command line: one subcommand per module of :mod:`tsa_bench.commands`.

A command module defines ``NAME`` (kebab-case), ``HELP`` (one line), ``EPILOG`` (runnable
examples), ``add_arguments(parser)`` and ``run(args) -> int`` (0 ok, 1 correctness gate
failed, 2 usage error). Modules are discovered, so adding a command touches no other file.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import List, Optional

import tsa_bench.commands as _commands


class UsageError(ValueError):
    """Bad command-line input: printed without a traceback, exit code 2."""


def _command_modules():
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{_commands.__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsa-bench", description="Token Sparse Attention: benchmarks and evaluation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP, epilog=getattr(mod, "EPILOG", None),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (UsageError, ValueError) as exc:
        print(f"tsa-bench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
