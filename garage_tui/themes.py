"""Themes as YAML files in ``themes/`` (shipped) and ``GARAGE_HOME/themes`` (user)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.storage import garage_home
from garage_tui.shipped import shipped_folder

if TYPE_CHECKING:
    from textual.theme import Theme

SHIPPED_THEMES = shipped_folder("themes")
THEME_FIELDS = ("primary", "secondary", "warning", "error", "success", "accent", "foreground",
                "background", "surface", "panel", "boost", "dark", "luminosity_spread", "text_alpha",
                "variables", "ansi")


def theme_from_yaml(path: Path, *, fast: bool = False) -> Theme:
    """One YAML file → a Textual theme; the file name is the default theme name.

    With ``fast`` a file in the plain subset shipped themes use (``simple_yaml``) is read without
    importing PyYAML (~50 ms of the first frame); anything else still goes through PyYAML.
    """
    from textual.theme import Theme

    text = path.read_text(encoding="utf-8")
    document = simple_yaml(text) if fast else None
    if document is None:
        import yaml

        document = yaml.safe_load(text)
    if not isinstance(document, dict) or "primary" not in document:
        raise ValueError(f"theme {path} needs at least a 'primary' colour")
    fields = {key: document[key] for key in THEME_FIELDS if key in document}
    return Theme(name=str(document.get("name", path.stem)), **fields)


_KEY = re.compile(r"([A-Za-z_][\w-]*):(?:[ \t]+(.*?))?[ \t]*")
# YAML 1.1 words PyYAML reads as booleans or null: the subset leaves them to PyYAML
_SPECIAL = {"yes", "no", "on", "off", "y", "n", "true", "false", "null", "~"}


def _scalar(text: str) -> tuple[bool, Any]:
    if re.fullmatch(r'"[^"\\]*"', text) or re.fullmatch(r"'[^']*'", text):
        return True, text[1:-1]
    if text in ("true", "false"):
        return True, text == "true"
    if re.fullmatch(r"-?[0-9]+", text):
        return True, int(text)
    if re.fullmatch(r"-?[0-9]+\.[0-9]+", text):
        return True, float(text)
    if re.fullmatch(r"[A-Za-z_][\w-]*", text) and text.lower() not in _SPECIAL:
        return True, text
    return False, None


def simple_yaml(text: str) -> dict[str, Any] | None:
    """``text`` read as the plain YAML subset theme files use, or None when it is anything more.

    The subset: ``key: value`` lines and one level of ``key:`` followed by two-space-indented
    ``key: value`` lines; values double- or single-quoted without escapes, ``true``/``false``,
    integers, decimals or bare words; whole-line comments. Within it the result equals
    ``yaml.safe_load`` (a test checks every shipped theme); outside it the caller uses PyYAML.
    """
    document: dict[str, Any] = {}
    nested: dict[str, Any] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indented = line.startswith("  ") and not line.startswith("   ")
        match = _KEY.fullmatch(line[2:] if indented else line)
        if match is None or (indented and nested is None):
            return None
        key, value = match.group(1), match.group(2)
        target = nested if indented else document
        if target is None or key in target:
            return None
        if value is None:
            if indented:
                return None
            nested = document[key] = {}
            continue
        if not indented:
            nested = None
        known, parsed = _scalar(value)
        if not known:
            return None
        target[key] = parsed
    return document if all(v != {} for v in document.values()) else None


def load_themes(folders: list[Path] | None = None) -> tuple[list[Theme], list[str]]:
    """Every readable theme in the shipped and user folders, plus one line per broken file."""
    import yaml

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


def find_theme(name: str, folders: list[Path] | None = None) -> Theme | None:
    """The theme called ``name`` read from its own file (``<name>.yaml``, the user's folder winning),
    or None when no such file holds it in the plain subset; the first frame needs only this one
    theme, and PyYAML (with ``load_themes``) is left for behind the first frame."""
    for folder in reversed(folders or [SHIPPED_THEMES, garage_home() / "themes"]):
        path = folder / f"{name}.yaml"
        if path.is_file():
            try:
                if simple_yaml(path.read_text(encoding="utf-8")) is None:
                    return None
                theme = theme_from_yaml(path, fast=True)
            except (OSError, UnicodeDecodeError, ValueError, TypeError):
                return None  # load_themes reports the broken file
            return theme if theme.name == name else None
    return None
