"""What ``build --out`` may replace: only an earlier garage build, never the user's folders.

A previous build is recognised by its ``provenance.json`` (written last, with the recipe name
and the per-tensor rows) and by holding nothing but the files a build writes. Anything else —
the current folder, one of its parents, the home folder, the filesystem root, a symlink, a
file, or a folder with files a build did not write — is refused before any work starts, and
checked again just before the swap.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from engine.build.sources import TOKENIZER_FILES
from engine.errors import StorageError

PROVENANCE = "provenance.json"
BUILD_FILES = frozenset({"model.safetensors", "model.safetensors.index.json", "config.json", "recipe.yaml",
                         PROVENANCE, "generation_config.json", "garage_attached.json", *TOKENIZER_FILES})
# weight shards, and the parts a finish op puts beside them (``engine.plugins.blade_op``)
_SHARD = re.compile(r"^(model-\d{5}-of-\d{5}|blade-\d{2})\.safetensors$")
MAX_PROVENANCE_BYTES = 256 * 1024**2


def _protected(target: Path) -> str | None:
    """Why ``target`` may never be replaced, or None."""
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd:
        return "it is the current folder"
    if resolved in cwd.parents:
        return "it holds the current folder"
    home = Path.home().resolve()
    if resolved == home or resolved in home.parents:
        return "it is the home folder or holds it"
    if resolved == Path(resolved.anchor):
        return "it is the filesystem root"
    return None


def is_garage_build(folder: Path) -> bool:
    """Whether ``folder`` carries a provenance file of the shape the builder writes."""
    path = folder / PROVENANCE
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_PROVENANCE_BYTES:
            return False
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(document, dict) and isinstance(document.get("recipe"), str) and isinstance(
        document.get("tensors"), list)


def check_out_folder(target: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that is not a new folder, an empty one, or (with ``--force``) an earlier build."""
    reason = _protected(target)
    if reason is not None:
        raise StorageError(f"refusing to build into {target}: {reason}; choose a new folder with --out")
    if target.is_symlink():
        raise StorageError(f"refusing to build into {target}: it is a symlink; choose a new folder with --out")
    if not target.exists():
        return
    if not target.is_dir():
        raise StorageError(f"{target} exists and is not a folder; choose another --out")
    try:
        entries = sorted(os.listdir(target))
    except OSError as exc:
        raise StorageError(f"cannot read {target}: {exc.strerror}; choose another --out") from exc
    if not entries:
        return
    if not overwrite:
        raise StorageError(f"{target} already exists and is not empty; choose another --out or pass --force")
    if not is_garage_build(target):
        raise StorageError(f"refusing to replace {target}: it is not an earlier garage build (no valid "
                           f"{PROVENANCE}); --force only replaces builds; choose another --out")
    foreign = [name for name in entries if name not in BUILD_FILES and not _SHARD.match(name)]
    foreign += [name for name in entries if name not in foreign and (target / name).is_dir()]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise StorageError(f"refusing to replace {target}: it holds files a build did not write ({shown}); "
                           "move them away or choose another --out")
