#!/usr/bin/env bash
# README command 1: on a fresh Debian 12 machine, install what is missing, start a local
# mosquitto if none listens on 127.0.0.1:1883, run affectd on the bundled demo clip and print
# the MQTT messages as they arrive. Ctrl-C stops everything.
#   scripts/demo.sh [--seconds N]   # stop by itself after N seconds
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=""
[ "${1:-}" = "--seconds" ] && seconds="${2:?--seconds needs a number}"

scripts/install-deps.sh
. scripts/env.sh
# The dev profile optimises every dependency (Cargo.toml) and shares its build with
# scripts/test.sh; a release build would compile the whole tree a second time.
cargo build --locked
mkdir -p run

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  echo "demo: starting mosquitto on 127.0.0.1:1883"
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n' > run/mosquitto.conf
  mosquitto -c run/mosquitto.conf 2>run/mosquitto.log &
  pids+=($!)
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1; done
fi

mosquitto_sub -h 127.0.0.1 -p 1883 -v -t 'affectd/#' &
pids+=($!)
echo "demo: open http://127.0.0.1:9720/ for the live view; also /metrics /healthz /readyz /api/cameras /api/tracks"
"${CARGO_TARGET_DIR:-target}/debug/affectd" run --config configs/demo.toml &
daemon=$!
pids+=($daemon)
if [ -n "$seconds" ]; then
  sleep "$seconds"
  kill -TERM "$daemon"
  wait "$daemon"
  sleep 0.5
else
  wait "$daemon"
fi
