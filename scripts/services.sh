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
# (The aws CLI the SQS interop tests drive must speak the JSON protocol — v1.31+/v2.13+; Debian's awscli is older, so it is not installed here.)
if [ ${#need_pkgs[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "services: installing ${need_pkgs[*]}"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"; }; } >/dev/null 2>&1 ||
    echo "services: could not install ${need_pkgs[*]}; their interop tests will skip (fail under CI=true)"
fi

start PostgreSQL 5432 pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql 2>/dev/null | head -1)" main start
start Redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
start RabbitMQ 5672 rabbitmq-server -detached

# npm packages of the emulators (fauxqs for SQS/SNS), from their committed lock files.
for dir in internal/testenv/npm; do
  if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules" ]; then
    if command -v npm >/dev/null 2>&1; then
      echo "services: npm ci in $dir"
      npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error || echo "services: npm ci failed in $dir"
    else
      echo "services: npm not found; SQS tests will skip (fail under CI=true)"
    fi
  fi
done
exit 0
