"""The ``dnas`` command: parses, calls the library, prints. Known errors become one line and exit code 2."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from ..errors import DnasError

# One module per subcommand, each with ``register(subparsers)`` that sets ``func(args) -> int``.
COMMANDS = ("search", "select", "query", "train", "analyze", "reproduce")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's default also prints usage)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dnas", description="Differentiable NAS with a careful selection step.")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: $DNAS_THREADS, else torch's default). Small "
                             "supernets run best with 1 thread on a busy machine.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        modname = f"{__name__}.{name}_cmd"
        if importlib.util.find_spec(modname) is not None:
            importlib.import_module(modname).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    threads = args.threads or int(os.environ.get("DNAS_THREADS", "0") or 0)
    if threads > 0:
        import torch
        torch.set_num_threads(threads)
    try:
        return int(args.func(args) or 0)
    except DnasError as e:
        sys.stderr.write(f"dnas: error: {e}\n")
        return 2
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        # A path the user named clashes with the file system (a file where a folder must go, no rights).
        sys.stderr.write(f"dnas: error: {e.filename}: {e.strerror}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("dnas: interrupted (resume with --resume)\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
