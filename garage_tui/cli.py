"""The ``garage`` command: no verb opens the TUI; verbs run headless for scripts."""

from __future__ import annotations

import argparse
import sys

from garage_tui.commands import register_all


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="garage", description="Model Garage: open, inspect and rebuild neural networks."
    )
    parser.add_argument("--model", default="smollm2-135m",
                        help="model the TUI opens (no verb): bundled name, local path or hub id (default: %(default)s)")
    parser.add_argument("--session", metavar="FILE", help="restore a saved workbench session in the TUI")
    parser.add_argument("--theme", help="TUI theme name (see themes/)")
    parser.add_argument("--device", dest="tui_device", default="cpu", help="device for the TUI's model")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    register_all(subparsers)
    return parser


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"garage: error: {message}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        from garage_tui.launch import launch_tui

        handler = launch_tui
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line, never a traceback
        from engine.errors import GarageError

        if isinstance(exc, GarageError):
            return _fail(str(exc), exc.exit_code)
        if isinstance(exc, OSError):
            return _fail(f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "))
        return _fail(f"unexpected {type(exc).__name__}: {exc} (please report this)", 1)


if __name__ == "__main__":
    sys.exit(main())
