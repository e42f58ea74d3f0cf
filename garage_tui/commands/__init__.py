"""One module per ``garage`` verb (``*_cmd.py``); each exposes ``register(subparsers)``.

Verbs import the engine lazily inside their handlers so ``garage --help`` and the TUI's
first frame never wait for torch.
"""

from __future__ import annotations

import importlib
import pkgutil


def register_all(subparsers) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.endswith("_cmd"):
            importlib.import_module(f"{__name__}.{info.name}").register(subparsers)
