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
# Two parts: every test but those marked `alone` on two xdist workers (most tests wait on a
# compiler, a subprocess or Ray as much as they compute, and measurements never overlap: they
# hold the host's lease, ago_search.measure.lease), then the `alone` ones (searches under a
# wall-clock budget) one at a time with nothing beside them. AGO_SEARCH_TEST_WORKERS=0 runs
# the first part in one process too. A file's tests go to one worker (`--dist loadfile`): its
# module fixtures (a tuned model, an RPC tracker) are made once, not once a worker.
WORKERS="${AGO_SEARCH_TEST_WORKERS:-2}"
# the host's lease (one measurement at a time) of this run's own, shared by both parts: a
# search the user runs meanwhile neither waits for the tests nor they for it
AGO_SEARCH_LEASE_DIR="${AGO_SEARCH_LEASE_DIR:-$(mktemp -d -t ago-search-test-leases.XXXXXX)}"
export AGO_SEARCH_LEASE_DIR
set +e
AGO_SEARCH_TEST_PART=shared .venv/bin/python -m pytest -n "$WORKERS" --dist loadfile "$@"
shared=$?
AGO_SEARCH_TEST_PART=alone .venv/bin/python -m pytest "$@"
alone=$?
set -e
# pytest's 5 = no tests collected: fine for one part (-k may select none of it), but a suite
# that ran nothing has not passed.
if [ "$shared" -eq 5 ] && [ "$alone" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
for status in "$shared" "$alone"; do
  if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
    exit "$status"
  fi
done
exit 0
