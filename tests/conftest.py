"""Shared fixtures: each real model is opened once per session; GARAGE_HOME is a temp folder.

The GGUF conversion cache lives in the repository's ``.cache/`` (git-ignored) so repeated
runs and CI share one conversion instead of dequantising SmolLM2 every session.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("GARAGE_CACHE", str(REPO / ".cache" / "garage-test"))
os.environ["GARAGE_HOME"] = tempfile.mkdtemp(prefix="garage-test-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def smollm2():
    from engine.loading import open_model

    return open_model("smollm2-135m")


@pytest.fixture(scope="session")
def minilm():
    from engine.loading import open_model

    return open_model("minilm-l6")


@pytest.fixture(scope="session")
def smollm2_eager():
    """SmolLM2 with eager attention, for tests that read attention patterns."""
    from engine.loading import open_model

    return open_model("smollm2-135m", attn_implementation="eager")


@pytest.fixture()
def garage_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("GARAGE_HOME", str(home))
    return home
