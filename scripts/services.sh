#!/usr/bin/env bash
# Make sure the PostgreSQL and RabbitMQ that the suite's integration tests use are up.
# These machines run both on 127.0.0.1 (trust auth / guest:guest); if one stopped, start it
# with the same command the machine uses. Prints what it did; never fails the run by itself:
# the tests that need a service skip loudly when it is not reachable.
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port, seconds
  for _ in $(seq 1 "$2"); do port_open "$1" && return 0; sleep 1; done
  return 1
}

if port_open 5432; then
  echo "services: PostgreSQL is up on 127.0.0.1:5432"
elif command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_port 5432 30 && echo "services: PostgreSQL started" || echo "services: WARNING PostgreSQL did not start; PostgreSQL tests will skip"
else
  echo "services: WARNING no PostgreSQL here; PostgreSQL tests will skip"
fi

if port_open 5672; then
  echo "services: RabbitMQ is up on 127.0.0.1:5672"
elif command -v rabbitmq-server >/dev/null; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 5672 60 && echo "services: RabbitMQ started" || echo "services: WARNING RabbitMQ did not start; broker tests will skip"
else
  echo "services: WARNING no RabbitMQ here; broker tests will skip"
fi
exit 0
