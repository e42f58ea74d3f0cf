"""What a model argument names (bundled name, folder, file or hub id), decided from files only.

Kept apart from ``engine.loading`` so verbs that only read configs and headers (``recipe
check``) locate models without importing torch or transformers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.bundled import BUNDLED, bundled_path
from engine.checks import check_gguf, check_safetensors
from engine.errors import ModelLoadError, ModelNotFoundError
from engine.folder_check import check_config_file, check_model_folder

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class ModelSource:
    name: str
    kind: str
    folder: Path | None = None  # HF folder with config.json
    file: Path | None = None  # .safetensors or .gguf file
    hub_id: str | None = None
    # A GGUF conversion-cache entry whose manifest was just checked: its files are the garage's
    # own output, hashed when written, so the file checks for foreign folders are not repeated.
    checked_cache: bool = False

    @property
    def path(self) -> Path:
        """The file this source names, else its folder (every kind but ``hub`` has one)."""
        found = self.file or self.folder
        if found is None:
            raise ModelLoadError(f"'{self.name}' names no local file or folder; pass a path")
        return found

    @property
    def local_folder(self) -> Path:
        found = self.folder or (self.file.parent if self.file is not None else None)
        if found is None:
            raise ModelLoadError(f"'{self.name}' names no local folder; pass a path")
        return found


def locate(spec: str) -> ModelSource:
    """Decide what a model argument names, checking files before transformers reads them."""
    if spec in BUNDLED:
        path = bundled_path(spec)
        kind = "bundled-gguf" if path.suffix == ".gguf" else "bundled-folder"
        if path.is_file():
            return ModelSource(spec, kind, folder=path.parent, file=path)
        return ModelSource(spec, kind, folder=path)
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"folder {path} has no config.json; pass a Hugging Face model folder")
            check_model_folder(path, weights=False)  # config sizes, weight index: before transformers reads them
            weights = sorted(path.glob("*.safetensors"))
            for weight_file in weights:
                check_safetensors(weight_file)
            return ModelSource(path.name, "folder", folder=path)
        if path.suffix == ".gguf":
            check_gguf(path)
            return ModelSource(path.stem, "gguf", folder=path.parent, file=path)
        if path.suffix == ".safetensors":
            check_safetensors(path)
            if not (path.parent / "config.json").is_file():
                raise ModelLoadError(
                    f"{path} has no config.json beside it; put the model's config.json in {path.parent}"
                )
            check_config_file(path.parent / "config.json")
            return ModelSource(path.stem, "safetensors", folder=path.parent, file=path)
        if path.name == "config.json":
            return ModelSource(path.parent.name, "config", folder=path.parent, file=path)
        raise ModelLoadError(f"{path} is not a model: pass a folder, a .safetensors, .gguf or config.json file")
    if HUB_ID.match(spec) and not spec.startswith((".", "~")):
        return ModelSource(spec, "hub", hub_id=spec)
    names = ", ".join(BUNDLED)
    raise ModelNotFoundError(
        f"no such model '{spec}': not a bundled name ({names}), an existing path, or a hub id like org/name"
    )
