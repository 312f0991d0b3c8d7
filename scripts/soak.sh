#!/usr/bin/env bash
# Soak run (not part of CI): the release daemon on a config for N minutes against a private
# mosquitto, to see what a short test cannot: memory creep, persons never freed, stalls.
# Every 10 s it samples the daemon's RSS; at the end it sends SIGTERM and prints, per minute,
# RSS, person messages, track end events and stall warnings so far, then the person messages'
# latency (p50, p99, max) and rate, and a summary. `scripts/soak.sh 1 CONFIG` is the 60 s
# end-to-end run of BENCHMARKS.md's runtime comparison.
#   scripts/soak.sh [minutes] [config]     # defaults: 30, configs/demo.toml
# The daemon runs as under systemd's Type=notify with the unit's WatchdogSec=30 (a notify
# socket in python3, when installed), so the table also shows what it reports in STATUS=:
# persons held by the encoder and samples it dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
minutes=${1:-30}
config=${2:-configs/demo.toml}
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || [ "$minutes" -lt 1 ]; then
  echo "soak: minutes must be a whole number >= 1, not '$minutes'" >&2
  exit 2
fi
[ -f "$config" ] || { echo "soak: no config file $config" >&2; exit 2; }
. scripts/env.sh

# CARGO_FEATURES (e.g. "cuda,tensorrt") builds the GPU providers in (scripts/gpu-check.sh).
cargo build --release --locked ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}
bin="${CARGO_TARGET_DIR:-$repo/target}/release/affectd"

work=$(mktemp -d -t affectd-soak.XXXXXX)
echo "soak: logs in $work"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A private broker on a free port.
port=""
for _ in $(seq 20); do
  candidate=$((18830 + RANDOM % 1000))
  listening "$candidate" || { port=$candidate; break; }
done
[ -n "$port" ] || { echo "soak: no free port found" >&2; exit 1; }
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n' \
  "$port" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" 2> "$work/mosquitto.log" &
pids+=($!)
for _ in $(seq 100); do listening "$port" && break; sleep 0.1; done
listening "$port" || { echo "soak: mosquitto did not start:" >&2; cat "$work/mosquitto.log" >&2; exit 1; }

# The config, copied: relative paths resolve against the config file's folder, so make them
# absolute; the broker is ours.
config_dir=$(cd "$(dirname "$config")" && pwd)
sed -e "s|\"\\.\\./|\"$config_dir/../|g" \
    -e "s|file:\\.\\./|file:$config_dir/../|g" \
    -e "s|\"\\./|\"$config_dir/|g" \
    -e "s|file:\\./|file:$config_dir/|g" \
    "$config" |
  awk -v port="$port" '
    /^[[:space:]]*\[/ {
      if (in_mqtt && !done) { print "port = " port; done = 1 }
      in_mqtt = ($0 ~ /^[[:space:]]*\[mqtt\][[:space:]]*(#.*)?$/)
    }
    in_mqtt && /^[[:space:]]*port[[:space:]]*=/ { print "port = " port; done = 1; next }
    { print }
    END {
      if (in_mqtt && !done) { print "port = " port; done = 1 }
      if (!done) { print "\n[mqtt]\nhost = \"127.0.0.1\"\nport = " port }
    }' > "$work/affectd.toml"

stdbuf=()
command -v stdbuf >/dev/null && stdbuf=(stdbuf -oL)
"${stdbuf[@]}" mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -v -t 'affectd/#' \
  > "$work/messages.log" 2> "$work/mosquitto_sub.log" &
pids+=($!)

# systemd's side of Type=notify: every datagram, one line per KEY=VALUE, after the
# monotonic time it arrived.
notify_env=()
if command -v python3 >/dev/null; then
  python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        data = s.recv(65536).decode(errors="replace")
        now = time.monotonic()
        for line in data.splitlines():
            if line:
                out.write(f"{now:.3f} {line}\n")
' "$work/notify.sock" "$work/notify.log" &
  pids+=($!)
  for _ in $(seq 50); do [ -S "$work/notify.sock" ] && break; sleep 0.1; done
  [ -S "$work/notify.sock" ] && notify_env=(NOTIFY_SOCKET="$work/notify.sock" WATCHDOG_USEC=30000000)
fi
[ ${#notify_env[@]} -gt 0 ] || echo "soak: no python3: running without a notify socket" >&2

# Without JOURNAL_STREAM the log lines carry timestamps.
env -u JOURNAL_STREAM -u WATCHDOG_PID "${notify_env[@]}" RUST_LOG="${RUST_LOG:-info}" \
  "$bin" run --config "$work/affectd.toml" 2> "$work/affectd.log" &
daemon=$!
pids+=($daemon)
start=$SECONDS
echo "soak: affectd (pid $daemon) on $config for $minutes min, broker on port $port"

rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$daemon/status" 2>/dev/null || true; }
count() { grep -cE "$1" "$2" 2>/dev/null || true; }
persons() { count '^affectd/[^ ]+/person/[0-9]+ ' "$work/messages.log"; }
begins() { count '^affectd/[^ ]+/tracks .*"event":"begin"' "$work/messages.log"; }
ends() { count '^affectd/[^ ]+/tracks .*"event":"end"' "$work/messages.log"; }
stalls() { count 'stages stopped making progress' "$work/affectd.log"; }
# From the last STATUS= ("...; persons 3, windows 120, samples dropped 45; ..."), or "-".
status_field() {
  local v
  v=$(grep ' STATUS=' "$work/notify.log" 2>/dev/null | tail -n1 | sed -nE "s/.*[ ;]$1 ([0-9]+).*/\\1/p")
  echo "${v:--}"
}

# Every 10 s: elapsed s, RSS MiB, person messages, track ends, stall warnings, persons held,
# samples dropped.
printf 'seconds\trss_mib\tpersons\tends\tstalls\theld\tdropped\n' > "$work/samples.tsv"
died=""
for ((t = 10; t <= minutes * 60; t += 10)); do
  while [ $((SECONDS - start)) -lt "$t" ]; do
    if ! kill -0 "$daemon" 2>/dev/null; then died=1; break 2; fi
    sleep 1
  done
  row=("$t" "$(rss_mib)" "$(persons)" "$(ends)" "$(stalls)" \
    "$(status_field persons)" "$(status_field 'samples dropped')")
  (IFS=$'\t'; echo "${row[*]}") >> "$work/samples.tsv"
  if [ $((t % 60)) -eq 0 ]; then
    echo "soak: minute $((t / 60))/$minutes: RSS ${row[1]} MiB, ${row[2]} person messages," \
      "${row[3]} track ends, ${row[4]} stall warnings, ${row[5]} persons held"
  fi
done

status="?"
if [ -n "$died" ]; then
  wait "$daemon" && status=0 || status=$?
  echo "soak: affectd exited by itself (status $status) after $((SECONDS - start)) s; see $work/affectd.log" >&2
else
  kill -TERM "$daemon"
  for _ in $(seq 150); do kill -0 "$daemon" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$daemon" 2>/dev/null; then
    echo "soak: affectd still running 15 s after SIGTERM; killing it" >&2
    kill -KILL "$daemon" 2>/dev/null || true
  fi
  wait "$daemon" && status=0 || status=$?
fi
sleep 0.5 # the last messages of the shutdown flush

echo
printf '%6s  %8s  %8s  %6s  %6s  %6s  %8s\n' minute rss_mib persons ends stalls held dropped
awk -F'\t' 'NR > 1 && $1 % 60 == 0 {
  printf "%6d  %8s  %8s  %6s  %6s  %6s  %8s\n", $1 / 60, $2, $3, $4, $5, $6, $7
}' "$work/samples.tsv"

rss2=$(awk -F'\t' '$1 == 120 { print $2 }' "$work/samples.tsv")
rss_end=$(awk -F'\t' 'NR > 1 && $2 != "" { v = $2 } END { print v }' "$work/samples.tsv")
last=$(tail -n1 "$work/samples.tsv" | cut -f1)
growth="n/a"
if [ -n "$rss2" ] && [ -n "$rss_end" ] && [ "$last" -gt 120 ] 2>/dev/null; then
  growth=$(awk -v a="$rss2" -v b="$rss_end" 'BEGIN { printf "%+.1f%%", (b - a) / a * 100 }')
fi
# The samples the encoder dropped: the count it logs when it stops, else (stopped past the
# shutdown deadline) its last STATUS=.
dropped=$(grep 'encoder stopped' "$work/affectd.log" | grep -oE 'dropped=[0-9]+' | tail -n1 |
  cut -d= -f2 || true)
if [ -z "$dropped" ] && [ "$(status_field 'samples dropped')" != - ]; then
  dropped="$(status_field 'samples dropped') (last STATUS=)"
fi
# The longest time the watchdog went unfed after READY (the unit restarts the daemon at 30 s).
max_gap=n/a
if [ -f "$work/notify.log" ]; then
  max_gap=$(awk '
    $2 == "READY=1" && !ready { ready = $1; prev = $1 }
    $2 == "WATCHDOG=1" && ready { if ($1 - prev > gap) gap = $1 - prev; prev = $1 }
    $2 == "STOPPING=1" && ready { if ($1 - prev > gap) gap = $1 - prev; exit }
    END { if (ready) printf "%.1f s", gap; else print "n/a" }' "$work/notify.log")
fi
# End-to-end latency of the person messages (`latency_ms`): p50, p99, max; and their rate.
latency=$(grep -E '^affectd/[^ ]+/person/[0-9]+ ' "$work/messages.log" |
  grep -oE '"latency_ms":[0-9.]+' | cut -d: -f2 | sort -g |
  awk 'function rank(q,  k) { k = int(NR * q); if (k < NR * q) k++; return k < 1 ? 1 : k }
    { v[NR] = $1 } END {
    if (NR == 0) { print "n/a"; exit }
    p50 = v[rank(0.50)]; p99 = v[rank(0.99)]
    printf "p50 %.0f ms, p99 %.0f ms, max %.0f ms", p50, p99, v[NR] }')
rate=$(awk -v n="$(persons)" -v s="$last" 'BEGIN { if (s > 0) printf "%.2f", n / s; else print "n/a" }')
rss_peak=$(awk -F'\t' 'NR > 1 && $2 > m { m = $2 } END { print m }' "$work/samples.tsv")
echo
echo "latency: ${latency}; ${rate} person messages/s; peak RSS ${rss_peak:-n/a} MiB"
echo "summary: RSS ${rss2:-n/a} MiB at 2 min, ${rss_end:-n/a} MiB at end, growth after 2 min ${growth};" \
  "$(stalls) stall warnings; longest watchdog gap ${max_gap:-n/a}; $(persons) person messages;" \
  "$(begins) tracks begun, $(ends) ended ($(( $(begins) - $(ends) )) never); encoder dropped samples: ${dropped:-not reported};" \
  "exit status $status"
echo "soak: logs in $work"
[ "$status" = 0 ] && [ -z "$died" ]
