#!/usr/bin/env bash
# Starts the local services queuekit's tests talk to, when they are installed
# but not running, and installs the npm packages the emulators need. It never
# fails the build by itself: a service still missing afterwards makes its
# tests skip with a message (or fail under CI=true).
set -u
cd "$(dirname "$0")/.."

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do up "$1" && return 0; sleep 0.1; done
  return 1
}

start() { # name port command...
  local name=$1 port=$2; shift 2
  if up "$port"; then return; fi
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "services: $name is not installed ($1 not found); its tests will skip (fail under CI=true)"
    return
  fi
  echo "services: starting $name"
  "$@" >/dev/null 2>&1 || true
  wait_port "$port" 30 || echo "services: $name did not answer on 127.0.0.1:$port"
}

# Command-line clients the interop tests drive (kcat for Kafka), from
# Debian's packages when missing and we may install.
need_pkgs=()
command -v kcat >/dev/null 2>&1 || need_pkgs+=(kcat)
# nginx for the ingest comparison test, which runs its own nginx (own config,
# loopback port); no system nginx is started (see policy-rc.d below).
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx)
# (The aws CLI the SQS interop tests drive must speak the JSON protocol — v1.31+/v2.13+; Debian's awscli is older, so it is not installed here.)
if [ ${#need_pkgs[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "services: installing ${need_pkgs[*]}"
  # A policy-rc.d that denies every start keeps packages (nginx) from
  # starting system services; one already present is left as it is.
  no_start=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && no_start=1
  fi
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"; }; } >/dev/null 2>&1 ||
    echo "services: could not install ${need_pkgs[*]}; their interop tests will skip (fail under CI=true)"
  [ -n "$no_start" ] && rm -f /usr/sbin/policy-rc.d
fi

start PostgreSQL 5432 pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql 2>/dev/null | head -1)" main start
start Redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
start RabbitMQ 5672 rabbitmq-server -detached
start MariaDB 3306 service mariadb start
start NATS 4222 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server
up 3306 && command -v mysql >/dev/null 2>&1 && mysql -uroot -e "CREATE DATABASE IF NOT EXISTS test" >/dev/null 2>&1

# npm packages of the emulators (fauxqs for SQS/SNS), from their committed lock files.
for dir in internal/testenv/npm; do
  # Install when node_modules is missing or older than the lock file (a
  # package was added since the last install).
  if [ -f "$dir/package-lock.json" ] && { [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; }; then
    if command -v npm >/dev/null 2>&1; then
      echo "services: npm ci in $dir"
      npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error || echo "services: npm ci failed in $dir"
    else
      echo "services: npm not found; SQS and kafkajs tests will skip (fail under CI=true)"
    fi
  fi
done
exit 0
