#!/usr/bin/env bash
# Create .venv (Python 3.11) and install ago-search with the given extras. Idempotent: a
# second run only re-checks the install. Sourced by run_example.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-zoo}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
VENV_PY="$ROOT/.venv/bin/python"
"$VENV_PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' || {
  echo "ago-search needs Python 3.11 (found $("$VENV_PY" --version)); set PYTHON=python3.11" >&2
  exit 1
}
STAMP="$ROOT/.venv/.ago-installed-$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  "$VENV_PY" -m pip install --quiet --upgrade pip
  # torch is pinned to the CPU build (2.13.0) in the extras; install it first so no
  # resolver step pulls a CUDA build.
  if [ "$EXTRAS" != "none" ]; then
    "$VENV_PY" -m pip install --quiet "torch==2.13.0"
    "$VENV_PY" -m pip install --quiet -e "$ROOT[$EXTRAS]"
  else
    "$VENV_PY" -m pip install --quiet -e "$ROOT"
  fi
  touch "$STAMP"
fi
