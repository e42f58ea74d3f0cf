"""An ASCII-only locale (``LC_ALL=C``, no UTF-8 coercion): the garage degrades its drawing, never crashes.

Class: text the terminal's encoding cannot hold — table borders, a part's unicode note, a
unicode file name in an error, a unicode prompt passed as arguments (which Python keeps as
surrogates under the C locale). Each runs as a real ``garage`` process with the locale set
before the interpreter starts, since that is when Python picks its stream encodings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.robust_harness import REPO, tiny_llama

ASCII_ENV = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": ""}


def garage_c(*argv: str | Path, home: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LC_CTYPE")}
    env.update({k: v for k, v in ASCII_ENV.items() if v}, GARAGE_HOME=str(home), PYTHONPATH=str(REPO))
    args = [os.fsencode(str(a)) for a in argv]
    return subprocess.run([sys.executable, "-m", "garage_tui.cli", *args], capture_output=True, timeout=timeout,
                          env=env, cwd=REPO)


def test_parts_list_with_unicode_notes_draws_in_ascii(tmp_path):
    from engine.parts import PartsBin

    source = tiny_llama(tmp_path / "src", layers=1)
    home = tmp_path / "home"
    PartsBin(home).add_from_checkpoint(source, "L0.mlp", name="mlp0", tags=["naïve"], notes="café ✓ — 日本")
    done = garage_c("parts", "list", home=home)
    assert done.returncode == 0, done.stderr
    assert b"mlp0" in done.stdout and b"Traceback" not in done.stderr
    done.stdout.decode("ascii")  # nothing the terminal cannot show was written
    shown = garage_c("parts", "show", "mlp0", home=home)
    assert shown.returncode == 0 and b"caf? ?" in shown.stdout, shown.stdout + shown.stderr


def test_an_error_naming_a_unicode_path_is_one_ascii_line(tmp_path):
    missing = tmp_path / "recette-ünï ✓.yaml"
    done = garage_c("recipe", "check", missing, home=tmp_path / "home")
    assert done.returncode == 2 and b"Traceback" not in done.stderr
    lines = done.stderr.decode("ascii").splitlines()
    assert len(lines) == 1 and lines[0].startswith("garage: error: ") and "recette-" in lines[0]


def test_unicode_arguments_reach_the_engine_as_text(tmp_path):
    """A recipe whose name is unicode, checked under the C locale: argument bytes decode as UTF-8."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("recipe_version: 1\nname: hybride-été\nsources: {a: /nonexistent/ünï}\nembed: a\n"
                      "final_norm: a\nlm_head: a\nlayers: [{take: a.L0}]\n", encoding="utf-8")
    done = garage_c("recipe", "check", recipe, "--json", home=tmp_path / "home")
    assert done.returncode == 2 and b"Traceback" not in done.stderr, done.stderr
    assert b"hybride-\\u00e9t\\u00e9" in done.stdout or b"hybride-" in done.stdout


@pytest.mark.slow
def test_run_with_a_unicode_prompt_works_under_the_c_locale(tmp_path):
    done = garage_c("run", "smollm2-135m", "--prompt", "Le café est très — ✓", "--top-k", "3",
                    home=tmp_path / "home", timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    assert b"Traceback" not in done.stderr
    done.stdout.decode("ascii")
