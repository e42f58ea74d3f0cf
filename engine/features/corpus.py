"""Local text for reading and training features: the bundled sample, Python's own documentation
(``pydoc_data.topics``, shipped with every CPython), or files the user names. Nothing is downloaded."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.features.errors import FeatureError

SOURCES = ("sample", "pydoc")
SAMPLE_TEXT = Path(__file__).resolve().parent.parent / "data" / "sample_text.txt"


def read_texts(sources: Sequence[str]) -> list[str]:
    """Texts from ``sample``, ``pydoc`` or file paths, in the order given."""
    texts: list[str] = []
    for source in sources:
        if source == "sample":
            texts.append(SAMPLE_TEXT.read_text(encoding="utf-8"))
        elif source == "pydoc":
            from pydoc_data.topics import topics

            texts.extend(topics[key] for key in sorted(topics))
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                raise FeatureError(f"text source '{source}' is neither sample, pydoc nor a readable file")
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise FeatureError(f"cannot read {path} as UTF-8 text ({exc}); pass a plain text file") from exc
    if not any(t.strip() for t in texts):
        raise FeatureError("the text sources are empty; pass sample, pydoc or a file with text in it")
    return texts


def token_windows(loaded: Any, texts: Sequence[str], window: int, *, max_tokens: int | None = None,
                  skip_windows: int = 0) -> Iterator[Tensor]:
    """Token ids ``[1, window]`` (the last one may be shorter), each starting with BOS when the model has one.

    ``skip_windows`` drops the first windows (to resume a run where it stopped).
    """
    if loaded.tokenizer is None:
        raise FeatureError(f"'{loaded.name}' has no tokenizer; feature reading and training need text")
    bos = loaded.tokenizer.bos_token_id
    body = window - (1 if bos is not None else 0)
    produced = 0
    index = 0
    for text in texts:
        ids = loaded.tokenizer(text, add_special_tokens=False).input_ids
        for start in range(0, len(ids), body):
            chunk = ids[start:start + body]
            if len(chunk) < 4:
                continue
            if index < skip_windows:
                index += 1
                continue
            index += 1
            row = ([bos] if bos is not None else []) + chunk
            if max_tokens is not None and produced + len(row) > max_tokens:
                row = row[: max(0, max_tokens - produced)]
                if len(row) < 2:
                    return
            produced += len(row)
            yield torch.tensor([row], dtype=torch.long, device=loaded.input_device)
            if max_tokens is not None and produced >= max_tokens:
                return
