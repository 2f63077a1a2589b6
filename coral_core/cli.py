"""coral: text-guided, localised StyleGAN2 editing (CoralStyleCLIP) from the command line.

Also ``python -m coral_core``. This module only parses and dispatches.

Every sub-command lives in ``coral_core/commands/`` and is registered here explicitly, in the
order ``coral --help`` lists them. Errors the user can fix print one clear line and exit with
status 2 instead of a traceback. The command modules import torch only inside the commands
that use it, so ``coral --help`` and ``coral queue`` start without it.
"""
from __future__ import annotations

import argparse
import sys

from .commands import edit, invert, models, prepare, queue, world
from .errors import CoralError

COMMAND_MODULES = (models, edit, prepare, world, invert, queue)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coral", description=__doc__.splitlines()[0].split(": ", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CoralError as exc:
        print(f"coral {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable output folder, disk full, missing file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"coral {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
