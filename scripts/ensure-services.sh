#!/usr/bin/env bash
# Starts the local PostgreSQL and RabbitMQ if they are installed but stopped, waits for
# them, and creates the service's database if it is missing. Safe to run repeatedly.
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
DB_NAME=${COORDINATOR_DB_NAME:-coordinator}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {
  local what=$1 host=$2 port=$3 secs=${4:-60}
  for _ in $(seq "$secs"); do
    port_open "$host" "$port" && return 0
    sleep 1
  done
  echo "ensure-services: $what did not come up on $host:$port within ${secs}s" >&2
  return 1
}

if ! port_open "$PGHOST" "$PGPORT"; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "ensure-services: starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  else
    echo "ensure-services: PostgreSQL is not running on $PGHOST:$PGPORT and is not installed here" >&2
    exit 1
  fi
  wait_port PostgreSQL "$PGHOST" "$PGPORT"
fi
# Accepting TCP is not yet accepting queries.
for _ in $(seq 30); do
  psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1 && break
  sleep 1
done

if ! port_open 127.0.0.1 5672; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "ensure-services: starting RabbitMQ"
    rabbitmq-server -detached || true
    rabbitmqctl await_startup --timeout 120 >/dev/null
  else
    echo "ensure-services: RabbitMQ is not running on 127.0.0.1:5672 and is not installed here" >&2
    exit 1
  fi
  wait_port RabbitMQ 127.0.0.1 5672
fi

# The partitioned inbox needs RabbitMQ's consistent-hash exchange (a plugin that ships
# with RabbitMQ). Enabling it is idempotent and needs no restart.
if command -v rabbitmq-plugins >/dev/null 2>&1; then
  if ! rabbitmq-plugins list --enabled --minimal 2>/dev/null | grep -qx rabbitmq_consistent_hash_exchange; then
    echo "ensure-services: enabling rabbitmq_consistent_hash_exchange"
    rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null
  fi
fi

# `coordinator agent add --credentials` and `agent remove` manage per-agent broker users
# through the management API (http://127.0.0.1:15672); also idempotent, no restart.
if command -v rabbitmq-plugins >/dev/null 2>&1; then
  if ! rabbitmq-plugins list --enabled --minimal 2>/dev/null | grep -qx rabbitmq_management; then
    echo "ensure-services: enabling rabbitmq_management"
    rabbitmq-plugins enable rabbitmq_management >/dev/null
  fi
  wait_port "RabbitMQ's management API" 127.0.0.1 15672
fi

if ! psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -Atqc \
     "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
  echo "ensure-services: creating database $DB_NAME"
  psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "CREATE DATABASE \"$DB_NAME\"" || true
fi
