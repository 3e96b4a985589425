#!/usr/bin/env bash
# One command, from a fresh clone, offline but for PyPI:
#
#   bash scripts/demo.sh
#
# 1. creates .venv (Python >= 3.10) and installs this project into it (pip install -e .);
# 2. creates .venv-meltano and installs Meltano (pinned) into it, apart from the project;
# 3. `meltano install`: the extractor tap-spreadsheets and the loader, each in its own venv;
# 4. starts the local Pinterest emulator on a free port;
# 5. runs `meltano --environment=dev run tap-spreadsheets target-pinterest-audiences` over
#    the bundled sample customers (sample/customers.csv);
# 6. prints the Customer List id, the Audience id, the counts added / removed / skipped by
#    reason (from the target's STATE, read back with `meltano state get`) and the number of
#    members the emulator holds; then stops the emulator (also on failure or Ctrl-C).
#
# Re-running it is fast (nothing is reinstalled unless pyproject.toml or the pins change)
# and gives the same result: the emulator starts empty every time, so the run is a full
# refresh (--full-refresh) rather than resuming from the saved bookmark, and it keeps its
# state under its own id (suffix "demo"), apart from your own dev pipeline's bookmark.
#
# Environment: PYTHON (default python3), MELTANO_VERSION (default below).
set -euo pipefail

MELTANO_VERSION="${MELTANO_VERSION:-4.4.1}"
PYTHON="${PYTHON:-python3}"
# The emulator's ad account and token; the dev environment in meltano.yml uses the same.
AD_ACCOUNT="549755885175"
ACCESS_TOKEN="emu-access-token"
EXTRACTOR="tap-spreadsheets"
LOADER="target-pinterest-audiences"
# Its own state id, so the demo never moves the bookmark of your own dev pipeline.
STATE_SUFFIX="demo"
STATE_ID="dev:${EXTRACTOR}-to-${LOADER}:${STATE_SUFFIX}"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
mkdir -p output
LOG_DIR="$ROOT/output"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false
export MELTANO_DISABLE_TRACKING=true
export PIP_DISABLE_PIP_VERSION_CHECK=1

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=/path/to/python3.10+)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$("$PYTHON" -V 2>&1) is too old: Python 3.10 or newer is needed (set PYTHON=...)"

# --- 1. the project's venv --------------------------------------------------------------
stamp_of() { cat "$@" 2>/dev/null | "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'; }
PROJECT_STAMP="$(stamp_of pyproject.toml)"
if [[ ! -x .venv/bin/python ]]; then
  say "Creating .venv"
  "$PYTHON" -m venv .venv
fi
if [[ "$(cat .venv/.demo-installed 2>/dev/null)" != "$PROJECT_STAMP" ]]; then
  say "Installing the project into .venv (pip install -e .)"
  .venv/bin/python -m pip install -q -e . >"$LOG_DIR/demo-pip-project.log" 2>&1 \
    || { tail -n 30 "$LOG_DIR/demo-pip-project.log" >&2; die "pip install -e . failed"; }
  echo "$PROJECT_STAMP" >.venv/.demo-installed
fi

# --- 2. Meltano in its own venv -----------------------------------------------------------
if [[ "$(.venv-meltano/bin/meltano --version 2>/dev/null)" != "meltano, version $MELTANO_VERSION" ]]; then
  say "Installing Meltano $MELTANO_VERSION into .venv-meltano"
  rm -rf .venv-meltano
  "$PYTHON" -m venv .venv-meltano
  .venv-meltano/bin/python -m pip install -q "meltano==$MELTANO_VERSION" >"$LOG_DIR/demo-pip-meltano.log" 2>&1 \
    || { tail -n 30 "$LOG_DIR/demo-pip-meltano.log" >&2; die "pip install meltano failed"; }
fi
# Keep the venv out of git without touching .gitignore (as Python 3.13's venv does itself).
echo '*' >.venv-meltano/.gitignore
MELTANO="$ROOT/.venv-meltano/bin/meltano"

# --- 3. Meltano's plugins -----------------------------------------------------------------
PLUGINS_STAMP="$(stamp_of meltano.yml pyproject.toml)"
if [[ "$(cat .meltano/.demo-installed 2>/dev/null)" != "$PLUGINS_STAMP" ]]; then
  say "meltano install"
  "$MELTANO" install >"$LOG_DIR/demo-meltano-install.log" 2>&1 \
    || { tail -n 30 "$LOG_DIR/demo-meltano-install.log" >&2; die "meltano install failed"; }
  grep -E "Installed [0-9]+/[0-9]+ plugins" "$LOG_DIR/demo-meltano-install.log" | sed 's/.*meltano *//' || true
  echo "$PLUGINS_STAMP" >.meltano/.demo-installed
fi

# --- 4. the emulator ----------------------------------------------------------------------
EMU_LOG="$LOG_DIR/demo-emulator.log"
EMU_PID=""
cleanup() {
  if [[ -n "$EMU_PID" ]] && kill -0 "$EMU_PID" 2>/dev/null; then
    kill "$EMU_PID" 2>/dev/null || true
    wait "$EMU_PID" 2>/dev/null || true
    echo "(emulator stopped)"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "Starting the Pinterest emulator"
.venv/bin/python -u -m target_pinterest_audiences.emulator --port 0 \
  --ad-account "$AD_ACCOUNT" --access-token "$ACCESS_TOKEN" >"$EMU_LOG" 2>&1 &
EMU_PID=$!
EMU_URL=""
for _ in $(seq 1 150); do
  EMU_URL="$(sed -n 's/.*listening on \(http:\/\/[^ ]*\).*/\1/p' "$EMU_LOG" | head -n1)"
  [[ -n "$EMU_URL" ]] && break
  kill -0 "$EMU_PID" 2>/dev/null || { cat "$EMU_LOG" >&2; die "the emulator exited"; }
  sleep 0.2
done
[[ -n "$EMU_URL" ]] || { cat "$EMU_LOG" >&2; die "the emulator did not say where it listens"; }
EMU_URL="${EMU_URL%/}"
echo "emulator: $EMU_URL (log: output/demo-emulator.log)"
# The target's api_url for this run; it takes precedence over the dev environment's value.
export TARGET_PINTEREST_AUDIENCES_API_URL="$EMU_URL/v5"

# --- 5. the pipeline ----------------------------------------------------------------------
RUN_LOG="$LOG_DIR/demo-meltano-run.log"
say "meltano --environment=dev run --full-refresh --state-id-suffix=$STATE_SUFFIX $EXTRACTOR $LOADER"
if ! "$MELTANO" --environment=dev run --full-refresh --state-id-suffix="$STATE_SUFFIX" "$EXTRACTOR" "$LOADER" >"$RUN_LOG" 2>&1; then
  tail -n 40 "$RUN_LOG" >&2
  die "meltano run failed (full log: output/demo-meltano-run.log)"
fi
grep -E "target-pinterest-audiences (Created|Adopting|Run summary)" "$RUN_LOG" \
  | sed 's/^.*target-pinterest-audiences */  /' || true
echo "(full log: output/demo-meltano-run.log)"

# --- 6. the report ------------------------------------------------------------------------
say "Report"
STATE_JSON="$("$MELTANO" --environment=dev state get "$STATE_ID" 2>/dev/null)" \
  || die "meltano state get $STATE_ID failed"
EMU_STATE="$(.venv/bin/python - "$EMU_URL" <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/_emulator/state?requests=0", timeout=10) as r:
    print(r.read().decode())
EOF
)" || die "could not read the emulator's state"

STATE_JSON="$STATE_JSON" EMU_STATE="$EMU_STATE" STATE_ID="$STATE_ID" .venv/bin/python - <<'EOF'
import json, os, sys

raw = os.environ["STATE_JSON"]
state = json.loads(raw[raw.index("{"):])  # `meltano state get` prints the JSON alone; be lenient
state = state.get("singer_state", state)
report = state.get("pinterest_audience")
if not isinstance(report, dict):
    sys.exit("demo: error: the saved state has no 'pinterest_audience' key: " + raw[:500])
emu = json.loads(os.environ["EMU_STATE"])

list_id = report.get("segment_id")
lists = {str(item.get("id")): item for item in emu.get("lists", [])}
members = lists.get(str(list_id), {}).get("members", [])
skipped = report.get("records_skipped") or {}
skipped_total = sum(skipped.values()) if isinstance(skipped, dict) else skipped
by_reason = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) if isinstance(skipped, dict) else ""

rows = [
    ("Ad account", report.get("ad_account_id")),
    ("Customer List id", f"{list_id}  ({report.get('segment_name')!r})"),
    ("Audience id", f"{report.get('audience_id')}  ({report.get('audience_name')!r})"),
    ("Records received", report.get("records_received")),
    ("Identifiers added", report.get("identifiers_added")),
    ("Identifiers removed", report.get("identifiers_removed")),
    ("Removes before the list existed", report.get("removes_without_list", 0)),
    ("Records skipped", f"{skipped_total}" + (f"  ({by_reason})" if by_reason else "")),
    ("API requests", report.get("requests")),
    ("Emulator: list members", f"{len(members)}  (lists: {len(emu.get('lists', []))}, audiences: {len(emu.get('audiences', []))})"),
]
width = max(len(k) for k, _ in rows)
for key, value in rows:
    print(f"  {key.ljust(width)} : {value}")
print()
print(f"  Saved state: meltano --environment=dev state get {os.environ['STATE_ID']}")
EOF
