# Shared settings of the local stack scripts (sourced, not run).
# The stack: DB1 and DB2 (PostgreSQL 15, wal_level=logical, wal2json) and an Apache Kafka broker (one KRaft node),
# on loopback ports, everything under one state folder. Override with environment variables:
#   PGM_STATE (default: compose/.state)   PGM_DB1_PORT (55431)   PGM_DB2_PORT (55432)   PGM_BROKER_PORT (29092)
#   PGM_CACHE (default: ~/.cache/pg-migrator): where compose/install keeps Kafka's jars
set -euo pipefail

PGM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGM_STATE=${PGM_STATE:-$PGM_REPO/compose/.state}
PGM_DB1_PORT=${PGM_DB1_PORT:-55431}
PGM_DB2_PORT=${PGM_DB2_PORT:-55432}
PGM_BROKER_PORT=${PGM_BROKER_PORT:-29092}
# The KRaft controller's listener (the broker's own quorum; clients never use it).
PGM_CONTROLLER_PORT=${PGM_CONTROLLER_PORT:-$((PGM_BROKER_PORT + 1))}
PG_BIN=${PGM_PG_BIN:-/usr/lib/postgresql/15/bin}
PGM_CACHE=${PGM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pg-migrator}
# Keep in step with kafka.version in compose/kafka/pom.xml.
KAFKA_VERSION=4.4.0
# The benchmark's Debezium (compose/debezium/pom.xml: debezium.version, connect.version); fetched by compose/bench only.
DEBEZIUM_VERSION=3.6.0.Final
CONNECT_VERSION=4.3.2

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

# Runs a PostgreSQL server command as the postgres user when we are root (PostgreSQL refuses to run as root).
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }

# The folder of Apache Kafka's jars (compose/install fetches them with Maven); fails when they are not there.
kafka_libs() {
  local libs="$PGM_CACHE/kafka-$KAFKA_VERSION/libs"
  [ -f "$libs/kafka_2.13-$KAFKA_VERSION.jar" ] && [ -f "$PGM_CACHE/kafka-$KAFKA_VERSION/complete" ] || return 1
  echo "$libs"
}

# The folder of the benchmark's Kafka Connect worker and Debezium plugins (compose/debezium/install fetches them);
# fails when they are not there.
debezium_home() {
  local home="$PGM_CACHE/debezium-$DEBEZIUM_VERSION-connect-$CONNECT_VERSION"
  [ -f "$home/complete" ] || return 1
  echo "$home"
}

# Whether a Kafka broker on 127.0.0.1:$1 answers a Metadata request (v4) with itself in the broker list: an open
# port is not enough, a KRaft node accepts connections before it serves.
kafka_answers() {
  python3 - "$1" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
client = b"pgm-probe"
body = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">i?", -1, False)
try:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.settimeout(2)
        s.sendall(struct.pack(">i", len(body)) + body)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">i", data[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit(1)
            data += chunk
    correlation, _throttle, brokers = struct.unpack(">iii", data[4:16])
    sys.exit(0 if correlation == 7 and brokers >= 1 else 1)
except OSError:
    sys.exit(1)
PY
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
