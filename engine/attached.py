"""Parts a model folder carries beside its weights, attached whenever the folder is opened.

Some parts cannot live in a standard architecture's weights: a blade reads a second model's
residual stream. A build that puts one into a hybrid (the recipe op ``blade``) writes the part's
file next to the weights and lists it in ``garage_attached.json``; ``open_model`` reads that list
and asks the kind's handler (registered by a plugin) to attach each entry as a *standing*
intervention of the opened model, one every ``engine.run.run`` of it applies. Plain transformers
ignores both files and loads the weights alone.

A caller that needs only the weights (a recipe source, an extraction, ``garage inspect``) opens
with ``attach=False``: the parts are not attached (model A is never opened) and their names go to
``LoadedModel.detached``, which ``engine.run`` refuses to run, so B is never run as if it were the
whole model.

Torch-free: the loader only checks for the manifest, and plugins register handlers by name.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import GarageError
from engine.registry import Registry

__all__ = ["ATTACHED_FORMAT", "ATTACHED_MANIFEST", "ATTACHMENT_KINDS", "CARRIED_FILE", "AttachmentKind", "OpenOptions",
           "attach_folder", "carried_names", "read_manifest", "register_attachment_kind", "weight_files"]

ATTACHED_MANIFEST = "garage_attached.json"
ATTACHED_FORMAT = "garage-attached/1"
MAX_MANIFEST_BYTES = 1024**2
MAX_ATTACHMENTS = 64
# the names a build gives the part files it puts beside the weights (engine.build.out_folder keeps the same):
# all that tells them from weights when the manifest that lists them is damaged
CARRIED_FILE = re.compile(r"^blade-\d{2}\.safetensors$")


@dataclass(frozen=True)
class OpenOptions:
    """How the folder was opened, so a part that needs another model opens it alike.

    ``max_memory`` and ``offload_folder`` are the user's budget for the folder (``device="auto"``): a
    second model a part opens spends from the same budget, so it opens within what the folder's own
    weights left of it, and offloads into a folder of its own under ``offload_folder``.
    """

    device: str = "cpu"
    dtype: str = "float32"
    max_memory: Mapping[int | str, int | str] | None = None
    offload_folder: str | None = None


@dataclass(frozen=True)
class AttachmentKind:
    """``attach(loaded, folder, entry, options)`` adds what ``entry`` describes to ``loaded.standing``."""

    name: str
    attach: Callable[[Any, Path, dict[str, Any], OpenOptions], None]


ATTACHMENT_KINDS: Registry[AttachmentKind] = Registry("attached part kind")


def register_attachment_kind(kind: AttachmentKind) -> AttachmentKind:
    return ATTACHMENT_KINDS.register(kind.name, kind)


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The entries of ``folder``'s manifest (empty when it has none); a damaged one is refused in one line."""
    path = folder / ATTACHED_MANIFEST
    if not path.is_file():
        return []
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError("it is over 1 MB")
        document = json.loads(path.read_text(encoding="utf-8"))
        entries = document.get("attached") if isinstance(document, dict) else None
        if document.get("format") != ATTACHED_FORMAT or not isinstance(entries, list) or \
                not all(isinstance(entry, dict) and isinstance(entry.get("kind"), str) for entry in entries):
            raise ValueError(f"it is not a {ATTACHED_FORMAT} list")
        if len(entries) > MAX_ATTACHMENTS:
            raise ValueError(f"it lists {len(entries)} parts, over the limit of {MAX_ATTACHMENTS}")
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, AttributeError) as exc:
        raise GarageError(f"{path} cannot be read ({exc}); rebuild the folder or delete that file to open the "
                          "weights alone") from None
    return entries


def weight_files(folder: Path, *, lenient: bool = False) -> list[Path]:
    """``folder``'s ``*.safetensors`` files less the parts its manifest lists: a carried blade is not a weight.

    A damaged manifest is refused, unless ``lenient`` (a caller that reads the weights alone, such as a
    recipe source): then the files named as a build names carried parts are left out instead."""
    try:
        carried = {str(entry.get("file")) for entry in read_manifest(folder)}
    except GarageError:
        if not lenient:
            raise
        return [path for path in sorted(folder.glob("*.safetensors")) if not CARRIED_FILE.fullmatch(path.name)]
    return [path for path in sorted(folder.glob("*.safetensors")) if path.name not in carried]


# folders whose parts this thread is attaching (a part may open another model, which may carry parts)
_opening = threading.local()


def carried_names(folder: Path) -> list[str]:
    """``kind name`` of each part ``folder``'s manifest lists (``blade a-into-b``), for messages; a
    damaged manifest is one entry saying so (its weights can still be read, the model cannot run)."""
    try:
        entries = read_manifest(folder)
    except GarageError:
        return [f"parts unknown (damaged {ATTACHED_MANIFEST})"]
    return [f"{entry['kind']} {entry.get('part') or entry.get('file') or '?'}" for entry in entries]


def attach_folder(loaded: Any, folder: Path, options: OpenOptions, attach: bool = True) -> None:
    """Attach every part ``folder``'s manifest lists to ``loaded`` (as standing interventions);
    with ``attach=False`` only name them in ``loaded.detached``."""
    if not attach:
        loaded.detached = carried_names(folder)
        return
    entries = read_manifest(folder)
    if not entries:
        return
    key = folder.resolve()
    opening: set[Path] = _opening.__dict__.setdefault("folders", set())
    if key in opening:
        raise GarageError(f"{folder} carries a part that needs {folder} itself opened first; rebuild it with a "
                          "part that reads another model")
    opening.add(key)
    try:
        for entry in entries:
            ATTACHMENT_KINDS.get(entry["kind"]).attach(loaded, folder, entry, options)
    finally:
        opening.discard(key)
