"""Verbs that touch no tensor answer without importing torch or transformers.

Each verb runs in a fresh interpreter (the only honest way to see what it imports); the
interpreter writes its exit code and the heavy modules it ended up with to a report file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")
RUN_VERB = """
import json, os, sys
from garage_tui.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:  # argparse's --help
    code = stop.code
heavy = sorted({name.split('.')[0] for name in sys.modules} & set(os.environ['HEAVY'].split(',')))
with open(os.environ['VERB_REPORT'], 'w') as report:
    json.dump({'code': code, 'heavy': heavy}, report)
"""


def run_verb(home: Path, tmp_path: Path, *argv: str) -> tuple[int, list[str], str]:
    report = tmp_path / "verb-report.json"
    env = {**os.environ, "GARAGE_HOME": str(home), "VERB_REPORT": str(report), "HEAVY": ",".join(HEAVY),
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", RUN_VERB, *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    result = json.loads(report.read_text())
    return result["code"], result["heavy"], done.stdout + done.stderr


@pytest.fixture()
def stocked_home(tmp_path):
    """A parts bin holding one small part (a MiniLM LayerNorm read straight from its checkpoint)."""
    from engine.parts import PartsBin

    home = tmp_path / "home"
    PartsBin(home).add_from_checkpoint("minilm-l6", "L0.norm1", name="keep")
    return home


@pytest.mark.slow  # starts a process per verb
def test_catalog_verbs_do_not_import_torch_or_transformers(stocked_home, tmp_path):
    verbs = [
        ("--help",), ("parts", "--help"), ("parts", "list"), ("parts", "list", "--json", "--kind", "norm"),
        ("parts", "show", "keep"), ("parts", "tag", "keep", "mine", "norms"), ("parts", "note", "keep", "first"),
        ("parts", "rename", "keep", "kept"), ("parts", "show", "kept", "--json"),
    ]
    for argv in verbs:
        code, heavy, output = run_verb(stocked_home, tmp_path, *argv)
        assert code == 0, (argv, output)
        assert heavy == [], f"garage {' '.join(argv)} imported {heavy}"
    shown = json.loads(output)
    assert shown["name"] == "kept" and shown["tags"] == ["mine", "norms"] and shown["notes"] == "first"
    code, heavy, output = run_verb(stocked_home, tmp_path, "parts", "rm", "kept")
    assert code == 0 and heavy == [], output
    assert not list((stocked_home / "parts").glob("*.safetensors"))


@pytest.mark.slow  # starts a process per verb
def test_errors_of_light_verbs_do_not_import_torch(stocked_home, tmp_path):
    for argv, needle in [(("parts", "show", "nope"), "no part named 'nope'"),
                         (("parts", "rm", "keep", "nope"), "no part named 'nope'"),
                         (("parts", "tag", "nope", "x"), "no part named 'nope'")]:
        code, heavy, output = run_verb(stocked_home, tmp_path, *argv)
        assert code == 2 and needle in output, (argv, output)
        assert heavy == [], f"garage {' '.join(argv)} imported {heavy}"
