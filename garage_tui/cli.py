"""The ``garage`` command: no verb opens the TUI; verbs run headless for scripts."""

from __future__ import annotations

import argparse
import sys

from engine.bundled import DEFAULT_MODEL  # torch-free, like every import on the way to --help
from garage_tui.commands import register_all


def _top_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model the TUI opens (no verb): bundled name, local path or hub id (default: %(default)s)")
    parser.add_argument("--session", metavar="FILE", help="restore a saved workbench session in the TUI")
    parser.add_argument("--theme", help="TUI theme name (see themes/)")
    parser.add_argument("--device", dest="tui_device", default="cpu", help="device for the TUI's model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="garage", description="Model Garage: open, inspect and rebuild neural networks."
    )
    _top_options(parser)
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    register_all(subparsers)
    _finite_floats(parser)
    return parser


def finite_float(text: str) -> float:
    """argparse type for every float option: NaN and ±inf are refused where they are read."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _finite_floats(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its options here
        if action.type is float:
            action.type = finite_float
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                _finite_floats(sub)


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"garage: error: {message}\n")
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _tolerant_streams() -> None:
    """Under an ASCII locale (``LC_ALL=C``, no UTF-8 coercion) degrade the drawing, never crash:
    characters the terminal cannot take are written as ``?``."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and encoding not in ("utf8", "utf8sig"):
            try:
                reconfigure(errors="replace")
            except (ValueError, OSError):  # a stream that cannot be reconfigured keeps its settings
                pass


def _argv_text(arg: str) -> str:
    """An argument as text: under an ASCII locale Python keeps non-ASCII bytes as surrogates,
    which tokenizers refuse; they are decoded as the UTF-8 they almost always are."""
    import os

    if not any("\udc80" <= ch <= "\udcff" for ch in arg):
        return arg
    return os.fsencode(arg).decode("utf-8", "replace")


def tui_args(argv: list[str]) -> argparse.Namespace | None:
    """The TUI's options when ``argv`` names no verb (and no help), else None.

    Opening the TUI then skips importing and registering every verb's module (~20 ms, a tenth
    of a bare Textual app's start); anything else, errors included, goes to the full parser.
    """
    if any(arg in ("-h", "--help") for arg in argv):
        return None
    parser = argparse.ArgumentParser(prog="garage", add_help=False, exit_on_error=False)
    _top_options(parser)
    try:
        args, rest = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return None
    return None if rest else args


def main(argv: list[str] | None = None) -> int:
    _tolerant_streams()
    arguments = [_argv_text(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    args = tui_args(arguments) or build_parser().parse_args(arguments)
    handler = getattr(args, "handler", None)
    if handler is None:
        from garage_tui.launch import launch_tui

        handler = launch_tui
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # `garage ... | head`: the reader left; that is not an error of ours
        _silence_stdout()
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line, never a traceback
        from engine.errors import GarageError

        if isinstance(exc, GarageError):
            return _fail(str(exc), exc.exit_code)
        if isinstance(exc, OSError):
            return _fail(f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "))
        return _fail(f"unexpected {type(exc).__name__}: {exc} (please report this)", 1)


if __name__ == "__main__":
    sys.exit(main())
