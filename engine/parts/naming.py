"""Part names that are safe as file names and can never escape ``GARAGE_HOME/parts``."""

from __future__ import annotations

import re
from pathlib import Path

from engine.parts.errors import PartNameError

_ALLOWED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe part name, else raise ``PartNameError`` saying why."""
    if not isinstance(name, str) or not name:
        raise PartNameError("a part name cannot be empty; use letters, digits and . _ + -")
    if "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise PartNameError(
            f"part name '{name}' is not allowed: no '/', '\\' or '..' (it must stay inside GARAGE_HOME/parts); "
            "use letters, digits and . _ + -"
        )
    if not _ALLOWED.match(name):
        raise PartNameError(
            f"part name '{name}' is not allowed: start with a letter or digit, then up to 127 of "
            "letters, digits and . _ + -"
        )
    return name


def default_name(source_name: str, address: str) -> str:
    """``<model>-<address>`` with anything unsafe replaced, e.g. ``smollm2-135m-L10.attn.h3``."""
    base = _UNSAFE_CHARS.sub("-", f"{source_name}-{address}").strip("-.") or "part"
    base = re.sub(r"\.{2,}", ".", base)
    if not base[0].isalnum():
        base = f"p{base}"
    return base[:100]


def part_file(parts_dir: Path, name: str) -> Path:
    """The file of part ``name``; checked again after resolving, as a second fence."""
    check_name(name)
    path = (parts_dir / f"{name}.safetensors")
    if path.resolve().parent != parts_dir.resolve():
        raise PartNameError(f"part name '{name}' would leave {parts_dir}; choose a plain name")
    return path
