"""Open the TUI (the no-verb ``garage``)."""

from __future__ import annotations

import argparse


def launch_tui(args: argparse.Namespace) -> int:
    # Until the engine bay lands, the no-verb command shows the default model's anatomy.
    from garage_tui.commands.inspect_cmd import run as inspect_run

    return inspect_run(argparse.Namespace(model=args.model, device=args.tui_device, dtype="float32",
                                          json=False, depth=2, structure_only=False))
