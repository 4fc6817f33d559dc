#!/usr/bin/env bash
# One entry point for the README's two commands; each sets itself up from a fresh clone.
#
#   bash deploy/run.sh demo    # the main job: a local deployment on the default model pair
#   bash deploy/run.sh test    # the whole test suite (what .ci/run runs)
#   bash deploy/run.sh setup   # only create/refresh .venv
#   bash deploy/run.sh <any specmemo subcommand ...>
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "specmemo needs Python 3.11 or newer" >&2; exit 1; }

setup() {
  # Re-install only when what the install depends on changed (pyproject, C sources).
  local stamp=.venv/.specmemo-stamp want
  want=$(cat pyproject.toml setup.py deploy/constraints.txt native/*.c native/*.h native/_build.py 2>/dev/null | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  echo "== setting up .venv (first run takes a few minutes)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel cffi
  # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q -c deploy/constraints.txt torch
  .venv/bin/python -m pip install -q -c deploy/constraints.txt --no-build-isolation -e ".[test,bench]"
  echo "$want" > "$stamp"
}

cmd=${1:-demo}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  test)
    setup
    exec .venv/bin/python -m pytest -q "$@" ;;
  *)
    setup
    exec .venv/bin/specmemo "$cmd" "$@" ;;
esac
