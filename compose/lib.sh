# Shared settings of the local stack scripts (sourced, not run).
# The stack: DB1 and DB2 (PostgreSQL 15, wal_level=logical, wal2json) and a tansu broker, on loopback ports,
# everything under one state folder. Override with environment variables:
#   PGM_STATE (default: compose/.state)   PGM_DB1_PORT (55431)   PGM_DB2_PORT (55432)   PGM_BROKER_PORT (29092)
set -euo pipefail

PGM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGM_STATE=${PGM_STATE:-$PGM_REPO/compose/.state}
PGM_DB1_PORT=${PGM_DB1_PORT:-55431}
PGM_DB2_PORT=${PGM_DB2_PORT:-55432}
# Below the ephemeral range (32768-60999): tansu binds without SO_REUSEADDR, so a client socket of a test that
# happened to get the same local port and sits in TIME_WAIT would keep it from starting.
PGM_BROKER_PORT=${PGM_BROKER_PORT:-29092}
PG_BIN=${PGM_PG_BIN:-/usr/lib/postgresql/15/bin}
TANSU_VERSION=0.6.0

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

# Runs a PostgreSQL server command as the postgres user when we are root (PostgreSQL refuses to run as root).
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }

tansu_bin() {
  local candidate
  for candidate in "${PGM_TANSU:-}" "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" "$(command -v tansu 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  return 1
}

# The folder holding the PostgreSQL data directories. As root, the postgres user must be able to reach it; a
# state folder under a private home (/root) is not reachable, so the clusters then live under /var/tmp.
pg_home() {
  if is_root && ! runuser -u postgres -- test -x "$PGM_STATE" 2>/dev/null; then
    echo "/var/tmp/pgm-stack-$(printf '%s' "$PGM_STATE" | cksum | cut -d' ' -f1)"
  else
    echo "$PGM_STATE/pg"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
