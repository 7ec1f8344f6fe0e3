#!/usr/bin/env bash
# Fresh machine -> install what the tests need and run them (CI calls this via .ci/run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh dev
# The aarch64 cross compiler lets the phone-profile tests cross-compile for real (they are
# skipped without it). Best effort: only where we are root with apt.
if ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    g++-aarch64-linux-gnu >/dev/null) || echo "note: aarch64 cross compiler not installed" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The layers of the house (pyproject.toml [tool.importlinter]): a module imports only from
# floors below its own.
.venv/bin/lint-imports
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  # pytest's 5 = no tests collected: a suite that ran nothing has not passed.
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
