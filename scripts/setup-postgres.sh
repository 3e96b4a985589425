#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the warehouse tests, and say how to reach it.
#
#   eval "$(bash scripts/setup-postgres.sh)"     # start (or reuse) it and export PG* vars
#   bash scripts/setup-postgres.sh --stop         # stop it
#
# Idempotent: installs Debian's postgresql package only if no server binaries are found
# (needs root or sudo), keeps its own data directory (not the system cluster), reuses the
# server if it is already running, otherwise starts it on 127.0.0.1 port 5432 when free or
# on another free port. It creates the role and database if missing.
# stdout carries only `export NAME=value` lines; progress goes to stderr.
#
# Overrides (environment): TPA_PG_DIR (default /tmp/tpa-postgres), TPA_PG_PORT (default:
# 5432 if free, else a free port), TPA_PG_USER (pinterest), TPA_PG_PASSWORD (pinterest),
# TPA_PG_DB (audiences).
set -euo pipefail

PG_DIR="${TPA_PG_DIR:-/tmp/tpa-postgres}"
PG_DATA="$PG_DIR/data"
PG_SOCK="$PG_DIR/sock"
PG_LOG="$PG_DIR/server.log"
PG_USER="${TPA_PG_USER:-pinterest}"
PG_PASSWORD="${TPA_PG_PASSWORD:-pinterest}"
PG_DB="${TPA_PG_DB:-audiences}"

log() { printf 'setup-postgres: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

find_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1; then
    d="$(pg_config --bindir 2>/dev/null || true)"
    if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then echo "$d"; return 0; fi
  fi
  # Debian keeps server binaries out of PATH; take the newest major version.
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then echo "$d"; return 0; fi
  done
  for d in "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")"; do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then echo "$d"; return 0; fi
  done
  return 1
}

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

BINDIR="$(find_bindir || true)"
if [[ -z "$BINDIR" ]]; then
  log "no PostgreSQL server binaries found; installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq >&2
  as_root apt-get install -y -qq postgresql >&2
  BINDIR="$(find_bindir)" || die "postgresql installed but initdb/pg_ctl not found"
fi
log "using server binaries in $BINDIR ($("$BINDIR/postgres" --version))"

# initdb and postgres refuse to run as root: run them as the 'postgres' system user.
RUN=()
OWNER="$(id -un)"
if [[ "$(id -u)" == 0 ]]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  OWNER=postgres
  if command -v runuser >/dev/null 2>&1; then RUN=(runuser -u postgres --); else RUN=(su postgres -s /bin/sh -c); fi
fi
run_pg() {
  if [[ "${RUN[0]:-}" == su ]]; then "${RUN[@]}" "$(printf '%q ' "$@")"
  elif [[ ${#RUN[@]} -gt 0 ]]; then "${RUN[@]}" "$@"
  else "$@"
  fi
}

if [[ "${1:-}" == "--stop" ]]; then
  if [[ -f "$PG_DATA/postmaster.pid" ]]; then
    run_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -m fast -w stop >&2 || true
    log "stopped"
  else
    log "not running"
  fi
  exit 0
fi

port_free() {
  python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is fine
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(1)
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

mkdir -p "$PG_DIR" "$PG_SOCK"
chown "$OWNER" "$PG_DIR" "$PG_SOCK" 2>/dev/null || true
chmod 755 "$PG_DIR"

if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
  log "initialising a new cluster in $PG_DATA"
  rm -rf "$PG_DATA"
  mkdir -p "$PG_DATA"
  chown "$OWNER" "$PG_DATA" 2>/dev/null || true
  pwfile="$PG_DIR/.superuser-pw"
  printf '%s\n' "$PG_PASSWORD" >"$pwfile"
  chown "$OWNER" "$pwfile" 2>/dev/null || true
  run_pg "$BINDIR/initdb" -D "$PG_DATA" -U postgres --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >&2
  rm -f "$pwfile"
fi

pid_alive() {
  # A killed server can linger as a zombie, which kill -0 (and so pg_ctl) still sees.
  [[ -n "$1" && -r "/proc/$1/status" ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"
}

running_port() {
  # Line 1 of postmaster.pid is the server's pid, line 4 its port.
  local pid
  [[ -f "$PG_DATA/postmaster.pid" ]] || return 0
  pid="$(sed -n 1p "$PG_DATA/postmaster.pid")"
  if pid_alive "$pid"; then
    sed -n 4p "$PG_DATA/postmaster.pid"
  else
    log "removing the stale postmaster.pid of a server that is gone (pid $pid)"
    rm -f "$PG_DATA/postmaster.pid"
  fi
}

PORT="$(running_port || true)"
if [[ -n "$PORT" ]]; then
  log "server already running on port $PORT"
else
  PORT="${TPA_PG_PORT:-}"
  if [[ -z "$PORT" ]]; then
    if port_free 5432; then PORT=5432; else PORT="$(free_port)"; fi
  fi
  log "starting server on 127.0.0.1:$PORT (log: $PG_LOG)"
  touch "$PG_LOG"; chown "$OWNER" "$PG_LOG" 2>/dev/null || true
  run_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start \
    -o "-p $PORT -c listen_addresses=127.0.0.1 -k $PG_SOCK -c fsync=off -c full_page_writes=off -c synchronous_commit=off" >&2 \
    || { tail -20 "$PG_LOG" >&2; die "server did not start"; }
fi

psql_su() { run_pg "$BINDIR/psql" -h "$PG_SOCK" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

for _ in $(seq 1 30); do
  if run_pg "$BINDIR/pg_isready" -h "$PG_SOCK" -p "$PORT" -q; then break; fi
  sleep 1
done
run_pg "$BINDIR/pg_isready" -h "$PG_SOCK" -p "$PORT" >&2 || die "server not ready (see $PG_LOG)"

# Role and database, created only when missing (password reset to the configured one).
# CREATEROLE: a test makes a second role, to use a snapshot store another role owns.
sql_pw="${PG_PASSWORD//\'/\'\'}"
if [[ "$(psql_su -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != 1 ]]; then
  psql_su -c "CREATE ROLE \"$PG_USER\" LOGIN PASSWORD '$sql_pw' CREATEDB CREATEROLE"
  log "created role $PG_USER"
else
  psql_su -c "ALTER ROLE \"$PG_USER\" LOGIN PASSWORD '$sql_pw' CREATEDB CREATEROLE"
fi
if [[ "$(psql_su -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]]; then
  psql_su -c "CREATE DATABASE \"$PG_DB\" OWNER \"$PG_USER\""
  log "created database $PG_DB"
fi

# Prove the credentials work over TCP, as the tests and the tap will connect.
PGPASSWORD="$PG_PASSWORD" "$BINDIR/psql" -h 127.0.0.1 -p "$PORT" -U "$PG_USER" -d "$PG_DB" -qAt \
  -c "SELECT 1" >/dev/null || die "cannot log in as $PG_USER over TCP"
log "ready: postgresql://$PG_USER:***@127.0.0.1:$PORT/$PG_DB"

printf 'export PGHOST=%q\n' 127.0.0.1
printf 'export PGPORT=%q\n' "$PORT"
printf 'export PGUSER=%q\n' "$PG_USER"
printf 'export PGPASSWORD=%q\n' "$PG_PASSWORD"
printf 'export PGDATABASE=%q\n' "$PG_DB"
