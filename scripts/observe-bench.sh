#!/usr/bin/env bash
# What the HTTP endpoints cost (BENCHMARKS.md, "Observe"): the daemon's CPU time on the bundled
# clip over the same span, in four runs: without [http]; with it and nobody looking; with one
# client on the debug view's MJPEG stream; with /metrics scraped every second.
# The pipeline is detection and tracking (no [model]), so the CPU is not saturated and the
# difference is the endpoints' own (with the encoder, a CPU box is busy by design and extra
# work only displaces encodes). Needs mosquitto on 127.0.0.1:1883 and curl.
#   scripts/observe-bench.sh [SECONDS]    # default 60 per run, after 15 s of warm-up
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
span="${1:-60}"
warmup=15
bin="${CARGO_TARGET_DIR:-target}/debug/affectd"
cargo build --locked -q
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
clk=$(getconf CLK_TCK)
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\n' > "$work/mosquitto.conf"
  mosquitto -c "$work/mosquitto.conf" 2>/dev/null &
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1; done
fi

config() { # $1: the [http] section
  cat <<TOML
[node]
id = "bench"
[[camera]]
id = "walkway"
uri = "file:$PWD/tests/fixtures/vtest.mp4"
[ingest]
fps = 8
[mqtt]
host = "127.0.0.1"
port = 1883
[detect]
engine = "$PWD/engines/nanodet-g-416.toml"
providers = ["cpu"]
$1
TOML
}

cpu_seconds() { # utime + stime of $1, in seconds
  awk -v t="$clk" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"
}

run() { # $1: name, $2: [http] section, $3: client command (or "")
  config "$2" > "$work/affectd.toml"
  "$bin" run --config "$work/affectd.toml" 2>"$work/$1.log" &
  local pid=$!
  sleep "$warmup"
  local client=""
  if [ -n "$3" ]; then
    bash -c "$3" >/dev/null 2>&1 &
    client=$!
    sleep 2
  fi
  local c0 t0 c1 t1
  c0=$(cpu_seconds "$pid"); t0=$(date +%s.%N)
  sleep "$span"
  c1=$(cpu_seconds "$pid"); t1=$(date +%s.%N)
  local extra=""
  if [ -n "$client" ]; then
    extra=$(curl -s http://127.0.0.1:9720/metrics | awk '
      /^affectd_view_frames_encoded_total / { f = $2 }
      /^affectd_view_encode_duration_seconds_sum / { s = $2 }
      /^affectd_view_encode_duration_seconds_count / { n = $2 }
      END { if (n > 0) printf " view frames encoded %d, mean encode %.1f ms", f, 1000 * s / n }')
    kill "$client" 2>/dev/null || true
  fi
  kill -TERM "$pid"; wait "$pid" || true
  awk -v n="$1" -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v x="$extra" \
    'BEGIN { printf "%-22s CPU %6.2f s over %5.1f s = %5.1f %% of one core%s\n", n, c1 - c0, t1 - t0, 100 * (c1 - c0) / (t1 - t0), x }'
}

echo "observe-bench: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), ${span} s per run"
run "no [http]" $'[http]\nenabled = false' ""
run "[http], nobody" $'[http]\nlisten = "127.0.0.1:9720"' ""
run "one MJPEG viewer" $'[http]\nlisten = "127.0.0.1:9720"' \
  "curl -sN http://127.0.0.1:9720/cameras/walkway/stream.mjpeg -o /dev/null"
run "/metrics every 1 s" $'[http]\nlisten = "127.0.0.1:9720"' \
  "while true; do curl -s http://127.0.0.1:9720/metrics -o /dev/null; sleep 1; done"
