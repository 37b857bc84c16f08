"""The ``dnas`` command: parses, calls the library, prints. Known errors become one line and exit code 2."""
from __future__ import annotations

import argparse
import json
import importlib
import importlib.util
import math
import os
import signal
import sys
import threading

from ..errors import DnasError, interrupted_exit_code, is_out_of_memory, memory_message, stop_on_signal
from ..launch import reports_errors, world_size

# One module per subcommand, each with ``register(subparsers)`` that sets ``func(args) -> int``.
COMMANDS = ("search", "select", "query", "train", "analyze", "reproduce")


def parse_options(items: list[str]) -> dict[str, object]:
    """KEY=VALUE pairs; values are standard JSON when they parse (5, true, null, 0.3), strings otherwise.

    Options are saved in config.json, which holds standard JSON only: NaN and Infinity stay strings (and
    are refused as numbers), a number beyond float range (1e999) is refused here."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DnasError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value, parse_constant=_not_json, parse_float=_finite_float)
        except ValueError as e:  # JSONDecodeError, _not_json, _finite_float
            if isinstance(e, DnasError):
                raise DnasError(f"--option {key}: {e}") from None
            out[key] = value
    return out


def _not_json(token: str) -> None:
    raise ValueError(f"{token} is not standard JSON")  # NaN, Infinity: kept as the string the user typed


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise DnasError(f"{text} is beyond the range of a float")
    return value


def _say(line: str) -> None:
    """One line to stderr; under torchrun from one process per machine (they all fail the same way)."""
    if reports_errors():
        sys.stderr.write(line + "\n")


def say_finished(path: object, what: str) -> None:
    """``--resume`` of work that has already finished changes nothing on disk; the command says so (stderr)
    and then prints its usual JSON line (stdout), exit code 0."""
    _say(f"dnas: {path}: {what} has already finished; nothing to resume")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's default also prints usage)
        _say(f"{self.prog}: error: {message}")
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


def _threads(args: argparse.Namespace) -> int:
    raw = args.threads if args.threads is not None else os.environ.get("DNAS_THREADS", "") or "0"
    try:
        threads = int(raw)
    except ValueError:
        raise DnasError(f"DNAS_THREADS must be a whole number, got {raw!r}") from None
    if not 0 <= threads <= 4096:
        raise DnasError(f"--threads must be between 0 (torch's default) and 4096, got {threads}")
    return threads


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop_on_signal) if on_main_thread else None
    try:
        if args.command != "train" and world_size() > 1:  # K copies would race on one output
            raise DnasError(f"only `dnas train` runs under torchrun; run `dnas {args.command}` as one process")
        threads = _threads(args)
        if threads > 0:
            import torch
            torch.set_num_threads(threads)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at the interpreter's exit: a reader that has left is met in this try
        return code
    except DnasError as e:
        _say(f"dnas: error: {e}")
        return 2
    except BrokenPipeError:  # the reader of our output left (`dnas ... | head`): stop quietly, as Unix tools do
        _silence_stdout()
        return 128 + signal.SIGPIPE
    except OSError as e:
        # A path the user named clashes with the file system (a file where a folder must go, no rights,
        # a read-only or full disk).
        where = f"{e.filename}: " if e.filename else ""
        _say(f"dnas: error: {where}{e.strerror or e}")
        return 2
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        # Out of memory outside the steps that name their sizes (``memory_limits``): still one line.
        line = memory_message(e, f"in dnas {args.command}", lower="its sizes (channels, batch size, resolution)")
        _say(f"dnas: error: {line}")
        return 2
    except KeyboardInterrupt as e:
        how = "run the same command again" if args.command == "reproduce" else "resume with --resume"
        kept = getattr(e, "dnas_kept", None)  # a --force start stopped before it replaced anything
        _say(f"dnas: interrupted ({kept}; run the same command to start over)" if kept
             else f"dnas: interrupted ({how})")
        return interrupted_exit_code(e)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    sys.exit(main())
