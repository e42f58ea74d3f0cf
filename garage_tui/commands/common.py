"""Options and helpers every verb shares."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

DEFAULT_MODEL = "smollm2-135m"  # mirrors engine.bundled.DEFAULT_MODEL without importing torch


def add_model_options(parser: argparse.ArgumentParser, optional_model: bool = False) -> None:
    if optional_model:
        parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                            help="bundled name, local folder, .safetensors/.gguf file or hub id (default: %(default)s)")
    else:
        parser.add_argument("model", help="bundled name (smollm2-135m, minilm-l6), local folder, "
                                          ".safetensors/.gguf file or hub id")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (accelerate device_map)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))


def open_from_args(args: argparse.Namespace, structure_only: bool = False):
    from engine.loading import open_model

    return open_model(args.model, device=args.device, dtype=args.dtype, structure_only=structure_only)


def _finite(value: Any) -> Any:
    """NaN and ±inf become null: strict JSON parsers reject Python's NaN/Infinity tokens."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def print_json(document: Any) -> None:
    json.dump(_finite(document), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def console():
    from rich.console import Console

    return Console()
