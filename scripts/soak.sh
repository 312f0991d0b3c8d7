#!/usr/bin/env bash
# Soak run (not part of CI): the release daemon on a config for N minutes against a private
# mosquitto, to see memory creep and stalls that a short test cannot. Every 10 s it samples the
# daemon's RSS; at the end it sends SIGTERM and prints, per minute, RSS, person messages, track
# end events and stall warnings so far, then a summary.
#   scripts/soak.sh [minutes] [config]     # defaults: 30, configs/demo.toml
# Env: RUST_LOG (default: info, and debug for the encoder so that its dropped-sample count is
# logged at shutdown).
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

cargo build --release --locked
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
"${stdbuf[@]}" mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -v -t 'affectd/#' > "$work/messages.log" 2> "$work/mosquitto_sub.log" &
pids+=($!)

# Without JOURNAL_STREAM the log lines carry timestamps.
env -u JOURNAL_STREAM RUST_LOG="${RUST_LOG:-info,affectd::encode=debug}" \
  "$bin" run --config "$work/affectd.toml" 2> "$work/affectd.log" &
daemon=$!
pids+=($daemon)
start=$SECONDS
echo "soak: affectd (pid $daemon) on $config for $minutes min, broker on port $port"

rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$daemon/status" 2>/dev/null || true; }
count() { grep -cE "$1" "$2" 2>/dev/null || true; }
persons() { count '^affectd/[^ ]+/person/[0-9]+ ' "$work/messages.log"; }
ends() { count '^affectd/[^ ]+/tracks .*"event":"end"' "$work/messages.log"; }
stalls() { count 'stages stopped making progress' "$work/affectd.log"; }

# Every 10 s: elapsed s, RSS MiB, person messages, track ends, stall warnings.
printf 'seconds\trss_mib\tpersons\tends\tstalls\n' > "$work/samples.tsv"
died=""
for ((t = 10; t <= minutes * 60; t += 10)); do
  while [ $((SECONDS - start)) -lt "$t" ]; do
    if ! kill -0 "$daemon" 2>/dev/null; then died=1; break 2; fi
    sleep 1
  done
  printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$(rss_mib)" "$(persons)" "$(ends)" "$(stalls)" >> "$work/samples.tsv"
  if [ $((t % 60)) -eq 0 ]; then
    echo "soak: minute $((t / 60))/$minutes: RSS $(rss_mib) MiB, $(persons) person messages, $(ends) track ends, $(stalls) stall warnings"
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
printf '%6s  %8s  %8s  %6s  %6s\n' minute rss_mib persons ends stalls
awk -F'\t' 'NR > 1 && $1 % 60 == 0 { printf "%6d  %8s  %8s  %6s  %6s\n", $1 / 60, $2, $3, $4, $5 }' "$work/samples.tsv"
rss2=$(awk -F'\t' '$1 == 120 { print $2 }' "$work/samples.tsv")
rss_end=$(awk -F'\t' 'NR > 1 && $2 != "" { v = $2 } END { print v }' "$work/samples.tsv")
last=$(tail -n1 "$work/samples.tsv" | cut -f1)
growth="n/a"
if [ -n "$rss2" ] && [ -n "$rss_end" ] && [ "$last" -gt 120 ] 2>/dev/null; then
  growth=$(awk -v a="$rss2" -v b="$rss_end" 'BEGIN { printf "%+.1f%%", (b - a) / a * 100 }')
fi
# The encoder logs its count at shutdown (debug); otherwise any stage's last `dropped=`.
dropped=$( (grep 'encoder stopped' "$work/affectd.log" || grep 'dropped=' "$work/affectd.log" || true) |
  grep -oE 'dropped=[0-9]+' | tail -n1 | cut -d= -f2 || true)
echo
echo "summary: RSS ${rss2:-n/a} MiB at 2 min, ${rss_end:-n/a} MiB at end, growth after 2 min ${growth};" \
  "$(stalls) stall warnings; $(persons) person messages; $(ends) track ends;" \
  "encoder dropped samples: ${dropped:-not reported}; exit status $status"
echo "soak: logs in $work"
[ "$status" = 0 ] && [ -z "$died" ]
