#!/usr/bin/env bash
# The GPU check (issue 10), one script for a machine with an NVIDIA GPU (driver >= 580) and
# the package registries reachable (PyPI, crates.io):
#   1. installs ONNX Runtime GPU and the CUDA libraries from PyPI (install-deps.sh --gpu);
#   2. builds affectd with ONNX Runtime's CUDA and TensorRT providers;
#   3. parity: the exported EmotionCLIP on CUDA (f32: max abs <= 1e-3; fp16: cosine >= 0.999)
#      and TensorRT when installed, against the CPU provider (tests/gpu.rs);
#   4. throughput rows: frame encoder f32/fp16 at batch 1/8/32/128, detector at batch 1/8;
#   5. N cameras: the demo clip on N = 1, 4 and 8 cameras for 60 s each, encoder fp16 on
#      the GPU (scripts/soak.sh 1): person messages/s, latency p50/p99, samples dropped, RSS.
# Everything it prints between the "rows" markers goes into BENCHMARKS.md, with the machine.
#   scripts/gpu-check.sh [cameras...]     # default: 1 4 8
set -euo pipefail
cd "$(dirname "$0")/.."
cameras=("$@")
[ ${#cameras[@]} -gt 0 ] || cameras=(1 4 8)

echo "gpu-check: $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ||
  { echo "gpu-check: nvidia-smi failed: no NVIDIA driver here" >&2; exit 1; }
echo "gpu-check: CPU $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) threads"

scripts/install-deps.sh --gpu
set -a
. .venv-gpu/affectd-gpu.env
set +a
export CARGO_FEATURES=cuda,tensorrt

echo "---- rows: parity and throughput (tests/gpu.rs)"
cargo test --locked --features "$CARGO_FEATURES" --test gpu -- --ignored --nocapture --test-threads 1 2>&1 |
  grep -E '^\||^test |panicked|error' || true
echo "---- end rows"

# N cameras of the demo clip, the encoder on the GPU in fp16 (TensorRT first when present).
work=$(mktemp -d -t affectd-gpu.XXXXXX)
repo=$(pwd)
for n in "${cameras[@]}"; do
  cfg="$work/cameras-$n.toml"
  {
    printf '[node]\nid = "gpu-check"\n\n'
    for i in $(seq "$n"); do
      printf '[[camera]]\nid = "cam%s"\nuri = "file:%s/tests/fixtures/vtest.mp4"\n\n' "$i" "$repo"
    done
    printf '[ingest]\nfps = 8\n\n[mqtt]\nhost = "127.0.0.1"\nport = 1883\n\n'
    printf '[detect]\nengine = "%s/engines/nanodet-g-416-dynamic.toml"\nproviders = ["tensorrt", "cuda", "cpu"]\ntrt_cache_dir = "%s/trt"\n\n' "$repo" "$work"
    printf '[model]\nallow_untrained = true\nupdate_every = 2\nruntime = "onnx"\nprecision = "fp16"\n'
    printf 'providers = ["tensorrt", "cuda"]\nonnx_cache_dir = "%s/onnx-cache"\nmax_batch = 64\nqueue = 256\n\n' "$work"
    printf '[window]\nstride = 1\nmax_tracks = 32\n'
  } > "$cfg"
  echo "---- rows: $n camera(s), 8 fps each, every sighting sampled, ViT-B/32 fp16 on the GPU"
  # The first minute of a TensorRT start builds engines: run once to warm the caches.
  [ "$n" = "${cameras[0]}" ] && scripts/soak.sh 1 "$cfg" > "$work/warm.log" 2>&1 || true
  scripts/soak.sh 1 "$cfg" > "$work/soak-$n.log" 2>&1 || true
  grep -E '^(latency|summary):' "$work/soak-$n.log" || tail -n 20 "$work/soak-$n.log"
  logs=$(sed -n 's/^soak: logs in //p' "$work/soak-$n.log" | tail -n1)
  [ -n "$logs" ] && grep -hE 'encoder runtime|person detector ready|provider unavailable' \
    "$logs/affectd.log" | sed -E 's/\x1b\[[0-9;]*m//g' | cut -c1-240 || true
  echo "---- end rows"
done
echo "gpu-check: done; logs in $work"
