#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: Debian's initdb and pg_ctl in a temporary folder, on a free
# loopback port, trust authentication, no container and no download. Sourced by scripts/test.sh:
#
#   source scripts/postgres.sh && start_test_postgres    # exports TEST_DATABASE_URL; stopped when the shell exits
#
# Each test then makes a database of its own on it (crates/testkit/src/postgres.rs).

start_test_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  PG_TEST_DIR=$(mktemp -d /tmp/orchestrator-pg.XXXXXX)
  # initdb refuses to run as root: as root, the cluster belongs to Debian's postgres user.
  local run=()
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$PG_TEST_DIR"
    run=(runuser -u postgres --)
  fi
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${run[@]}" "$bin/initdb" -D "$PG_TEST_DIR/data" -U orchestrator --auth=trust -E UTF8 --no-instructions >/dev/null
  # fsync off: the cluster lives as long as the test run. Enough connections for every test's pool at once.
  "${run[@]}" "$bin/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/log" -w -s \
    -o "-p $port -k $PG_TEST_DIR -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off" start
  PG_TEST_CTL=("${run[@]}" "$bin/pg_ctl" -D "$PG_TEST_DIR/data" -w -s -m immediate stop)
  trap stop_test_postgres EXIT
  export TEST_DATABASE_URL="postgres://orchestrator@127.0.0.1:$port/postgres"
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') for the tests at $TEST_DATABASE_URL"
}

stop_test_postgres() {
  "${PG_TEST_CTL[@]}" || true
  rm -rf "$PG_TEST_DIR"
}
