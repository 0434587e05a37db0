#!/usr/bin/env bash
# Hearth's two set-up commands (README): `./dev.sh demo` runs the main job, `./dev.sh test` the test suite.
# Each makes .venv with everything the project needs on a fresh Linux machine with Python 3.10+.
set -euo pipefail
cd "$(dirname "$0")"

usage() { echo "usage: ./dev.sh demo | test [pytest args...] | lint" >&2; exit 2; }
[ $# -ge 1 ] || usage

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
# torch first and pinned: the pack declares torch without a version (a ComfyUI environment's CUDA build
# must never be replaced), so an unpinned install here would pull the newest CUDA build instead.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -r requirements-dev.txt
# The tests import the pack from this folder (harness/pack.py), as ComfyUI does; an install left by an older
# dev.sh (pip install -e .) would let a test pass for a reason no user has.
if .venv/bin/python -m pip show -q comfyui-hearth >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -q -y comfyui-hearth
fi

# ruff and mypy as pyproject.toml configures them; a finding stops the tests. mypy checks the pack under its
# import name, comfyui_hearth, from the folder the tests import it from (harness/pack.py: one link to this
# checkout), since the checkout's own folder may have any name; run there, it names files comfyui_hearth/...
lint() {
    .venv/bin/python -m ruff check .
    local here=$PWD root
    root=$(.venv/bin/python -c "from harness.pack import import_root; print(import_root())")
    (cd "$root" && "$here/.venv/bin/python" -m mypy --config-file "$here/pyproject.toml" --cache-dir "$here/.mypy_cache")
}

cmd=$1; shift
case "$cmd" in
    demo) exec .venv/bin/python -m bench.demo "$@" ;;
    test) lint; exec .venv/bin/python -m pytest -q tests "$@" ;;
    lint) lint ;;
    *) usage ;;
esac
