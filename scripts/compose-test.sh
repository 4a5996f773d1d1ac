#!/usr/bin/env bash
# Runs the fleet with `docker compose` for real, the way a new user would,
# and checks what only a real engine shows.
#
# 1. tools: installs docker.io, debootstrap and the Compose v2 plugin (from
#    Debian's trixie release, a Go binary that runs here) when missing, and
#    starts dockerd when none runs;
# 2. images: a Debian base from debootstrap, and on it stand-ins for the
#    images a registry would give (RabbitMQ, Redis, an OTLP receiver instead
#    of Jaeger, a Rust builder with this machine's toolchain), built once and
#    reused; then regatta's image from the real deploy/Dockerfile;
# 3. the fleet: `docker compose -f compose.yaml -f deploy/compose.offline.yaml
#    up -d` with a fresh env file of random secrets, and then:
#    - the demo exits 0, and the coordinator never restarted on the way
#      (it waits for the broker and Redis instead of exiting);
#    - a manifest enqueued from the host (`regatta enqueue --path-map`) runs
#      in the project folder the containers mount;
#    - `--scale worker=6` spreads sessions over more than 3 workers;
#    - a worker container killed mid-batch costs a `lost` attempt, and the
#      batch still succeeds;
#    - a worker whose process crashes is restarted by Docker;
#    - traces reach the OTLP receiver from the coordinator and the workers;
# 4. `down -v`, always, even when a step fails.
#
# Every step is bounded in time, and each phase prints how long it took.
# The checkout is left as it was (the demo's outputs are removed if they were
# not there before); dockerd is stopped again if this script started it.
# Package mirrors come from this machine's apt configuration.
#
# Usage: scripts/compose-test.sh     (as root, or with sudo; Debian or Ubuntu)
# Environment: REGATTA_COMPOSE_KEEP=1 leaves the fleet up for a look.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

log() { printf 'compose-test: %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
sudo_() { "${as_root[@]}" "$@"; }

# --- phases and their times ------------------------------------------------
started=$SECONDS
phase_name=
phase_started=$SECONDS
phases=()
phase() {
  end_phase
  phase_name=$1
  phase_started=$SECONDS
  log "== $phase_name"
}
end_phase() {
  if [ -n "$phase_name" ]; then
    local took=$((SECONDS - phase_started))
    phases+=("$(printf '%-40s %4ss' "$phase_name" "$took")")
    log "-- $phase_name: ${took}s"
    phase_name=
  fi
}

# --- clean-up, whatever happens ----------------------------------------------
project=regatta-compose-test
work=$(mktemp -d /tmp/regatta-compose-test.XXXXXX)
envfile=$work/env
started_dockerd=
demo_out_existed=
[ -e examples/demo/out ] && demo_out_existed=1
fleet_up=

dc=(docker compose -p "$project" --env-file "$envfile"
  -f "$root/compose.yaml" -f "$root/deploy/compose.offline.yaml")
compose() { "${dc[@]}" "$@"; }

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  end_phase
  if [ -n "$fleet_up" ]; then
    if [ "$status" -ne 0 ]; then
      log "the fleet's last logs:"
      timeout 30 "${dc[@]}" logs --no-color --tail 40 >&2 2>/dev/null || true
    fi
    if [ "${REGATTA_COMPOSE_KEEP:-}" = 1 ]; then
      log "leaving the fleet up (REGATTA_COMPOSE_KEEP=1): docker compose -p $project --env-file $envfile -f compose.yaml -f deploy/compose.offline.yaml down -v"
      work=
    else
      timeout 120 "${dc[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 \
        || log "docker compose down failed; remove the fleet with: docker compose -p $project down -v"
    fi
  fi
  # A rebuilt regatta image leaves the one before it untagged: drop those.
  timeout 60 docker image prune -f --filter "label=com.docker.compose.project=$project" >/dev/null 2>&1 || true
  if [ -z "$demo_out_existed" ]; then rm -rf "$root/examples/demo/out"; fi
  [ -n "$work" ] && rm -rf "$work"
  if [ -n "$started_dockerd" ] && [ "${REGATTA_COMPOSE_KEEP:-}" != 1 ]; then
    log "stopping the dockerd this script started"
    kill "$started_dockerd" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.2; done
  fi
  log "phase times:"
  for line in "${phases[@]}"; do printf '  %s\n' "$line" >&2; done
  printf '  %-40s %4ss\n' total "$((SECONDS - started))" >&2
  if [ "$status" -eq 0 ]; then log "passed"; else log "failed (exit $status)"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command with a time bound; says which step overran.
bounded() {
  local seconds=$1
  shift
  local status=0
  timeout --kill-after=10 "$seconds" "$@" || status=$?
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    fail "over ${seconds}s: $*"
  fi
  return "$status"
}

# Polls `check` every second until it succeeds, for at most `seconds`.
wait_until() { # seconds what check...
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not after ${seconds}s"
    sleep 1
  done
}

# --- 1. tools ------------------------------------------------------------------
phase "tools (docker, compose, debootstrap)"

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_updated=1
  fi
  log "installing $*"
  # No init system here: keep packages from starting their services.
  local policy=/usr/sbin/policy-rc.d added=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | sudo_ tee "$policy" >/dev/null && sudo_ chmod +x "$policy" && added=1
  fi
  local status=0
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 || status=$?
  [ -n "$added" ] && sudo_ rm -f "$policy"
  [ "$status" -eq 0 ] || fail "apt-get install $* failed"
}

command -v apt-get >/dev/null || fail "this script installs its tools with apt-get (Debian or Ubuntu)"
[ -x /usr/sbin/dockerd ] || command -v dockerd >/dev/null || apt_install docker.io
command -v docker >/dev/null || apt_install docker.io
[ -x /usr/sbin/debootstrap ] || command -v debootstrap >/dev/null || apt_install debootstrap

# The Debian mirror apt already uses for this release.
debian_mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
  | awk '$2 == "bookworm" || $2 == "trixie" { print $1; exit }')

if ! docker compose version >/dev/null 2>&1; then
  [ -n "$debian_mirror" ] || fail "no Debian mirror in apt's sources to take the Compose plugin from"
  log "installing the Compose v2 plugin from Debian trixie ($debian_mirror)"
  apt_dir=$work/apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $debian_mirror trixie main" >"$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
  bounded 300 apt-get "${apt_opts[@]}" update -qq >&2
  (cd "$apt_dir" && bounded 300 apt-get "${apt_opts[@]}" download docker-compose >&2)
  dpkg-deb -x "$apt_dir"/docker-compose_*.deb "$apt_dir/root"
  sudo_ install -D -m 755 "$apt_dir/root/usr/libexec/docker/cli-plugins/docker-compose" \
    /usr/libexec/docker/cli-plugins/docker-compose
  docker compose version >/dev/null || fail "the Compose plugin does not run"
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (there is no init system); its log: /var/log/dockerd.log"
  sudo_ sh -c 'nohup dockerd >>/var/log/dockerd.log 2>&1 & echo $! >/run/regatta-compose-test-dockerd.pid'
  started_dockerd=$(cat /run/regatta-compose-test-dockerd.pid)
  wait_until 60 "dockerd answers" docker info >/dev/null 2>&1
fi
log "$(docker compose version), engine $(docker version --format '{{.Server.Version}}')"

# --- 2. images ---------------------------------------------------------------
# Built once and reused: delete them (docker rmi) to build from scratch.
base_image=regatta-standin/debian:bookworm
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

phase "image: Debian base (debootstrap)"
if ! image_exists "$base_image"; then
  [ -n "$debian_mirror" ] || fail "no Debian mirror in apt's sources for debootstrap"
  rootfs=$work/rootfs
  bounded 600 "${as_root[@]}" debootstrap --variant=minbase bookworm "$rootfs" "$debian_mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
  sudo_ rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
  # apt in the images never keeps downloaded packages.
  echo 'APT::Keep-Downloaded-Packages "false"; Binary::apt::APT::Keep-Downloaded-Packages "false";' \
    | sudo_ tee "$rootfs/etc/apt/apt.conf.d/90regatta-standin" >/dev/null
  sudo_ tar -C "$rootfs" -c . | bounded 300 docker import - "$base_image" >/dev/null
  sudo_ rm -rf "$rootfs"
fi

standin() { # image dockerfile [context]
  local image=$1 dockerfile=$2 context=${3:-$root/deploy/offline}
  if ! image_exists "$image"; then
    log "building $image"
    # The classic builder: the Docker CLI wants the buildx plugin for
    # BuildKit, and these Dockerfiles need nothing more.
    DOCKER_BUILDKIT=0 bounded 900 docker build -q --build-arg "BASE=$base_image" \
      -f "$root/deploy/offline/$dockerfile" -t "$image" "$context" >"$work/$dockerfile.log" 2>&1 \
      || { tail -30 "$work/$dockerfile.log" >&2; fail "building $image"; }
  fi
}
phase "images: RabbitMQ, Redis, OTLP stand-ins"
standin regatta-standin/rabbitmq:local rabbitmq.Dockerfile
standin regatta-standin/redis:local redis.Dockerfile
standin regatta-standin/otlp-sink:local otlp-sink.Dockerfile

phase "image: Rust builder stand-in"
if ! image_exists regatta-standin/rust:local; then
  # This machine's own toolchain: cargo and rustc with the standard library.
  sysroot=$(rustc --print sysroot)
  toolchain=$work/rust/toolchain
  mkdir -p "$toolchain/bin" "$toolchain/lib/rustlib"
  cp -a "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$toolchain/bin/"
  cp -a "$sysroot"/lib/*.so* "$toolchain/lib/"
  cp -a "$sysroot/lib/rustlib/x86_64-unknown-linux-gnu" "$toolchain/lib/rustlib/"
  cp "$root/deploy/offline/rust.Dockerfile" "$work/rust/"
  standin regatta-standin/rust:local rust.Dockerfile "$work/rust"
  rm -rf "$work/rust"
fi

# --- the fleet's settings: random secrets, free ports -----------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
random_hex() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
api_port=$(free_port)
token=$(random_hex)
project_dir=$work/project
mkdir -p "$project_dir"
cat >"$envfile" <<EOF
REGATTA_SECRET=$(random_hex)
REGATTA_API_TOKEN=$token
REGATTA_NAMESPACE=regatta
REGATTA_CONTAINER_USER=$(id -u):$(id -g)
REGATTA_PROJECT_DIR=$project_dir
REGATTA_API_PORT=$api_port
REGATTA_RABBITMQ_UI_PORT=$(free_port)
REGATTA_JAEGER_UI_PORT=$(free_port)
EOF

phase "image: regatta (deploy/Dockerfile)"
# HTTPS from inside the build goes through this machine's proxy when it has
# locally added certificate authorities: the builder stage trusts them; the
# runtime image never holds them.
extra_ca=
for crt in /usr/local/share/ca-certificates/*.crt; do
  [ -f "$crt" ] && extra_ca+=$(cat "$crt")$'\n'
done
build_args=()
[ -n "$extra_ca" ] && build_args=(--build-arg "EXTRA_CA_CERTS=$extra_ca")
bounded 1500 "${dc[@]}" build "${build_args[@]}" coordinator >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; fail "building regatta's image"; }

# --- 3. the fleet --------------------------------------------------------------
phase "up: demo batch"
fleet_up=1
bounded 300 "${dc[@]}" up -d --no-build >"$work/up.log" 2>&1 \
  || { cat "$work/up.log" >&2; fail "docker compose up -d (did the coordinator give up before the broker was up?)"; }
demo=$(compose ps -aq demo)
[ -n "$demo" ] || fail "no demo container"
demo_status=$(bounded 240 docker wait "$demo") || fail "waiting for the demo"
compose logs --no-color demo | tail -3 >&2
[ "$demo_status" = 0 ] || fail "the demo exited $demo_status"
coordinator=$(compose ps -q coordinator)
restarts=$(docker inspect -f '{{.RestartCount}}' "$coordinator")
[ "$restarts" = 0 ] || fail "the coordinator restarted $restarts times on the way up"
compose logs --no-color coordinator worker >"$work/fleet.log" 2>&1
if grep -q 'services.sh' "$work/fleet.log"; then
  fail "a container's log tells the user to run scripts/services.sh"
fi

# The host's view of the API, with the CLI taken from the image just built.
cli=$work/regatta
cid=$(docker create regatta:local)
docker cp "$cid:/usr/local/bin/regatta" "$cli" >/dev/null
docker rm "$cid" >/dev/null
regatta() { REGATTA_API="http://127.0.0.1:$api_port" REGATTA_API_TOKEN=$token bounded 300 "$cli" "$@"; }
api_get() { curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$api_port$1"; }

phase "enqueue from the host"
mkdir -p "$project_dir/hello"
cat >"$project_dir/hello/manifest.yaml" <<'EOF'
batch: from-the-host
playbook:
  name: greet
  run: 'mkdir -p out && echo "hello from $(cat /proc/sys/kernel/hostname)" > "out/$REGATTA_UNIT_ID.txt"'
units:
  - id: one
    outputs: [out/one.txt]
  - id: two
    outputs: [out/two.txt]
EOF
# Without the map, the fleet cannot see the host's path: the CLI says so
# before anything is enqueued.
if regatta enqueue "$project_dir/hello/manifest.yaml" --path-map "/nowhere=/srv/regatta/project" >"$work/refused.log" 2>&1; then
  fail "a manifest outside the mapped folder was enqueued"
fi
grep -q 'path-map' "$work/refused.log" || { cat "$work/refused.log" >&2; fail "the refusal does not name --path-map"; }
REGATTA_PATH_MAP="$project_dir=/srv/regatta/project" regatta enqueue "$project_dir/hello/manifest.yaml" --wait >"$work/hello.id" \
  || fail "a manifest enqueued from the host did not succeed"
for unit in one two; do
  grep -q 'hello from' "$project_dir/hello/out/$unit.txt" || fail "no output of unit $unit in the host's project folder"
done

phase "scale to 6 workers, kill one mid-batch"
bounded 180 "${dc[@]}" up -d --no-build --no-recreate --scale worker=6 worker >"$work/scale.log" 2>&1 \
  || { cat "$work/scale.log" >&2; fail "scaling to 6 workers"; }
live_workers() { [ "$(api_get /v1/workers | python3 -c 'import json, sys; print(sum(1 for w in json.load(sys.stdin) if w.get("healthy")))')" -ge 6 ]; }
wait_until 90 "6 healthy workers" live_workers
mkdir -p "$project_dir/spread"
{
  echo 'batch: spread'
  echo 'concurrency: 24'
  echo 'playbook:'
  echo '  name: nap'
  echo "  run: 'sleep 4'"
  echo 'units:'
  for i in $(seq 1 36); do echo "  - id: nap-$i"; done
} >"$project_dir/spread/manifest.yaml"
batch=$(REGATTA_PATH_MAP="$project_dir=/srv/regatta/project" regatta enqueue "$project_dir/spread/manifest.yaml")
sessions() { api_get "/v1/batches/$batch/sessions"; }
running_worker() {
  victim=$(sessions | python3 -c 'import json, sys
for s in json.load(sys.stdin):
    if s.get("state") == "running" and s.get("worker"):
        print(s["worker"].split(":")[0]); break')
  [ -n "$victim" ]
}
wait_until 60 "a running session" running_worker
log "killing worker container $victim (SIGKILL) mid-batch"
docker kill -s KILL "$victim" >/dev/null
batch_state() { api_get "/v1/batches/$batch" | python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])'; }
batch_ended() { case $(batch_state) in succeeded | failed | cancelled | needs_review) return 0 ;; *) return 1 ;; esac; }
wait_until 180 "the spread batch ends" batch_ended
[ "$(batch_state)" = succeeded ] || fail "the spread batch ended $(batch_state)"
sessions >"$work/spread.json"
python3 - "$work/spread.json" <<'EOF' || fail "sessions did not spread, or no attempt was lost"
import json, sys
sessions = json.load(open(sys.argv[1]))
workers = {s["worker"] for s in sessions if s.get("worker")}
lost = [s for s in sessions if s.get("state") == "lost"]
print(f"compose-test: {len(sessions)} sessions on {len(workers)} workers, {len(lost)} lost", file=sys.stderr)
sys.exit(0 if len(workers) > 3 and lost else 1)
EOF

phase "a crashed worker comes back"
survivor=$(compose ps -q worker | head -n 1)
before=$(docker inspect -f '{{.RestartCount}}' "$survivor")
# SIGKILL to the worker's own process (not `docker kill`, which Docker
# counts as a stop by hand): a crash, which `restart: unless-stopped` undoes.
worker_pid=$(docker top "$survivor" -eo pid,comm | awk '$2 == "regatta-worker" { print $1; exit }')
[ -n "$worker_pid" ] || fail "no regatta-worker process in $survivor"
sudo_ kill -KILL "$worker_pid"
restarted() { [ "$(docker inspect -f '{{.RestartCount}}' "$survivor")" -gt "$before" ] && [ "$(docker inspect -f '{{.State.Running}}' "$survivor")" = true ]; }
wait_until 60 "docker restarts the crashed worker" restarted

phase "traces reach the OTLP receiver"
traces_from() { compose logs --no-color jaeger 2>&1 | grep -c "otlp-sink: /v1/traces .*$1" >/dev/null; }
wait_until 30 "spans from the coordinator" traces_from regatta-coordinator
wait_until 30 "spans from the workers" traces_from regatta-worker

phase "down -v"
bounded 120 "${dc[@]}" down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || fail "docker compose down -v"
fleet_up=
end_phase
