#!/usr/bin/env bash
# Makes sure RabbitMQ, Redis and PostgreSQL answer on localhost.
#
# For each service: if it answers, nothing is done; if it is installed but
# stopped, it is started; if it is missing (a bare Debian machine), it is
# installed with apt-get first. Then we wait until it answers, or fail with
# a message that says how to start it by hand.
#
# Usage: scripts/services.sh [rabbitmq] [redis] [postgres] [iproute2] [chromium]   (default: the three services)
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Daemons live in /usr/sbin, which is not on a normal user's PATH.
has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    log "cannot install $*: no apt-get here; install it with your package manager and re-run"
    exit 1
  fi
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_updated=1
  fi
  log "installing $*"
  # Keep packages from starting services through an init system that a
  # container does not have (policy-rc.d answers "not now"); we start them
  # ourselves below.
  local policy=/usr/sbin/policy-rc.d added_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | sudo_ tee "$policy" >/dev/null && sudo_ chmod +x "$policy" && added_policy=1
  fi
  sudo_ env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "$@" >&2 || {
    [ -n "$added_policy" ] && sudo_ rm -f "$policy"
    log "apt-get install $* failed"
    exit 1
  }
  [ -n "$added_policy" ] && sudo_ rm -f "$policy"
  return 0
}

wait_for() { # name port seconds how-to-start
  local name=$1 port=$2 seconds=$3 i
  for ((i = 0; i < seconds * 5; i++)); do
    if port_open "$port"; then log "$name answers on 127.0.0.1:$port"; return 0; fi
    sleep 0.2
  done
  log "$name does not answer on 127.0.0.1:$port after ${seconds}s; start it with: $4"
  exit 1
}

ensure_redis() {
  local start='redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log'
  if port_open 6379; then log "redis answers on 127.0.0.1:6379"; return; fi
  has redis-server || apt_install redis-server
  sudo_ mkdir -p /var/lib/redis /var/log/redis
  log "starting redis"
  sudo_ redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2 \
    || sudo_ redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2
  wait_for redis 6379 30 "$start"
}

ensure_rabbitmq() {
  local start='rabbitmq-server -detached'
  if port_open 5672; then log "rabbitmq answers on 127.0.0.1:5672"; return; fi
  has rabbitmq-server || apt_install rabbitmq-server
  # A package install may have started it already.
  if ! port_open 5672; then
    log "starting rabbitmq"
    sudo_ rabbitmq-server -detached >&2 || true
  fi
  wait_for rabbitmq 5672 120 "$start"
}

ensure_postgres() {
  local start='pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'
  if ! port_open 5432; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql; fi
    if ! port_open 5432; then
      log "starting postgresql"
      local version
      version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
      if [ -z "$version" ]; then
        log "no PostgreSQL cluster under /etc/postgresql; create one with pg_createcluster"
        exit 1
      fi
      sudo_ pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    fi
    wait_for postgresql 5432 60 "$start"
  else
    log "postgresql answers on 127.0.0.1:5432"
  fi
  # The tests' sessions hold connections with psql.
  has psql || apt_install postgresql-client
  # Tests connect as postgres over TCP without a password, as on the
  # development machines: make a fresh install trust loopback connections.
  if command -v psql >/dev/null 2>&1 \
    && ! psql -h 127.0.0.1 -U postgres -d postgres -w -Atc 'select 1' >/dev/null 2>&1; then
    local hba
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$hba" ]; then
      log "allowing trusted loopback connections in $hba"
      sudo_ sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
      sudo_ pg_ctlcluster --skip-systemctl-redirect "$(basename "$(dirname "$(dirname "$hba")")")" main reload >&2 || true
    fi
  fi
}

# Not a service: the network partition test cuts a worker off in a network
# namespace of its own, made with iproute2's `ip`.
ensure_iproute2() {
  has ip || apt_install iproute2
}

# Not a service: the dashboard's browser test drives Debian's headless
# Chromium through chromedriver (tests/tests/dashboard.rs).
ensure_chromium() {
  if has chromium && has chromedriver; then log "chromium and chromedriver are installed"; return; fi
  apt_install chromium chromium-driver
  has chromium && has chromedriver || { log "chromium or chromedriver is still missing after apt-get install chromium chromium-driver"; exit 1; }
  log "chromium and chromedriver are installed"
}

services=("$@")
[ ${#services[@]} -gt 0 ] || services=(rabbitmq redis postgres)
for service in "${services[@]}"; do
  case $service in
    rabbitmq) ensure_rabbitmq ;;
    redis) ensure_redis ;;
    postgres) ensure_postgres ;;
    iproute2) ensure_iproute2 ;;
    chromium) ensure_chromium ;;
    *) log "unknown service '$service' (known: rabbitmq redis postgres iproute2 chromium)"; exit 2 ;;
  esac
done
