"""User settings under GARAGE_HOME: theme, keymap file; environment variables win.

Plain YAML read without the engine's heavy modules, so the first frame stays fast.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.storage import atomic_write_text, garage_home


def settings_path() -> Path:
    return garage_home() / "settings.yaml"


@dataclass
class Settings:
    """What the TUI remembers between runs."""

    theme: str = "garage"
    keymap: dict[str, str] = field(default_factory=dict)
    structure_first_gb: float = 2.0  # open models above this size structure-only first
    path: Path | None = None

    def save(self) -> None:
        """Write atomically; the keymap lives in its own file, so only the theme changes here."""
        import yaml  # only a save needs the writer; the first frame reads without it

        target = self.path or settings_path()
        document = {k: v for k, v in asdict(self).items() if k != "path"}
        atomic_write_text(target, yaml.safe_dump(document, sort_keys=True))


def load_settings(path: Path | None = None) -> Settings:
    """Settings from ``GARAGE_HOME/settings.yaml`` (missing file: defaults; bad file: defaults).

    A broken settings file must never keep the garage from opening, so it is ignored rather
    than fatal; ``GARAGE_THEME`` overrides the theme for one run.
    """
    target = path or settings_path()
    document: dict[str, Any] = {}
    from engine.safe_parse import BadDocumentError, load_yaml

    try:
        loaded = load_yaml(target, "settings") if target.is_file() else None  # with size/depth/alias limits
        if isinstance(loaded, dict):
            document = loaded
    except BadDocumentError:
        pass
    settings = Settings(path=target)
    if isinstance(document.get("theme"), str):
        settings.theme = document["theme"]
    if isinstance(document.get("keymap"), dict):
        settings.keymap = {str(k): str(v) for k, v in document["keymap"].items()}
    if isinstance(document.get("structure_first_gb"), (int, float)) and math.isfinite(document["structure_first_gb"]):
        settings.structure_first_gb = float(document["structure_first_gb"])
    if os.environ.get("GARAGE_THEME"):
        settings.theme = os.environ["GARAGE_THEME"]
    return settings
