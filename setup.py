"""Build hook: the wheel carries the repository's top-level themes/, recipes/ and sessions/.

Everything else about the package lives in pyproject.toml. The folders stay at the top of the
repository (that is where people look for them); at build time they are copied into
``garage_tui/data/`` where ``garage_tui.shipped.shipped_folder`` finds them once installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = {"themes": "*.yaml", "recipes": "*.yaml", "sessions": "*.json"}


class BuildPyWithShippedData(build_py):
    """``build_py`` plus a copy of the shipped folders into the built ``garage_tui`` package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install reads the folders in place
        for folder, pattern in SHIPPED.items():
            target = Path(self.build_lib) / "garage_tui" / "data" / folder
            target.mkdir(parents=True, exist_ok=True)
            for source in sorted((HERE / folder).glob(pattern)):
                shutil.copyfile(source, target / source.name)


setup(cmdclass={"build_py": BuildPyWithShippedData})
