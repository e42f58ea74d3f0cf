"""Themes as YAML files in ``themes/`` (shipped) and ``GARAGE_HOME/themes`` (user)."""

from __future__ import annotations

from pathlib import Path

import yaml
from textual.theme import Theme

from engine.storage import garage_home
from garage_tui.shipped import shipped_folder

SHIPPED_THEMES = shipped_folder("themes")
THEME_FIELDS = ("primary", "secondary", "warning", "error", "success", "accent", "foreground",
                "background", "surface", "panel", "boost", "dark", "luminosity_spread", "text_alpha",
                "variables", "ansi")


def theme_from_yaml(path: Path) -> Theme:
    """One YAML file → a Textual theme; the file name is the default theme name."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or "primary" not in document:
        raise ValueError(f"theme {path} needs at least a 'primary' colour")
    fields = {key: document[key] for key in THEME_FIELDS if key in document}
    return Theme(name=str(document.get("name", path.stem)), **fields)


def load_themes(folders: list[Path] | None = None) -> tuple[list[Theme], list[str]]:
    """Every readable theme in the shipped and user folders, plus one line per broken file."""
    themes: list[Theme] = []
    problems: list[str] = []
    for folder in folders or [SHIPPED_THEMES, garage_home() / "themes"]:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            try:
                themes.append(theme_from_yaml(path))
            except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
                problems.append(f"theme {path.name} skipped: {exc}")
    return themes, problems
