"""Open the TUI (the no-verb ``garage``)."""

from __future__ import annotations

import argparse


def launch_tui(args: argparse.Namespace) -> int:
    """Build the app from the top-level options and run it; a bad session fails before any frame."""
    from garage_tui.factory import build_app

    app = build_app(session=args.session, model=args.model, device=args.tui_device, theme=args.theme)
    app.run()
    return int(app.return_code or 0)
