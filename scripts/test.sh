#!/usr/bin/env bash
# One command that sets up and runs the whole test suite (the one .ci/run calls):
#   bash scripts/test.sh [extra pytest args]
# It creates .venv (or $VENV, with $PYTHON), installs the project with its dev extras exactly as the README says,
# starts PostgreSQL for the warehouse test (scripts/setup-postgres.sh), checks lint, format
# and types, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ] || [ "${FRESH_VENV:-0}" = "1" ]; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[dev]'

# The warehouse test needs a PostgreSQL server; without one it is skipped and says why.
if [ -f scripts/setup-postgres.sh ] && [ "${SKIP_POSTGRES:-0}" != "1" ]; then
  pg_env="$(mktemp)"
  if bash scripts/setup-postgres.sh > "$pg_env"; then
    # shellcheck disable=SC1090
    set -a; . "$pg_env"; set +a
  else
    echo "warning: PostgreSQL could not be started; the warehouse test will be skipped" >&2
  fi
  rm -f "$pg_env"
fi

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy" target_pinterest_audiences

set +e
"$VENV/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$status"
