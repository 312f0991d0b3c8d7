#!/usr/bin/env bash
# Installs what affectd needs on Debian 12 and is missing: GStreamer (with the RTSP server
# library for tests), mosquitto, chromium (the debug page is tested in it, headless),
# prometheus (its promtool checks /metrics in the tests; the
# package also enables a Prometheus server on :9090 under systemd), and the ONNX Runtime
# library from the PyPI wheel.
# Idempotent: a second run installs nothing.
#   scripts/install-deps.sh            # into ./.venv (development, tests, demo)
#   scripts/install-deps.sh --system   # also copies the library to /opt/affectd/onnxruntime/lib
#                                      # (what configs/affectd.toml and the unit name)
#   scripts/install-deps.sh --gpu      # also ONNX Runtime GPU (CUDA 13, cuDNN 9) from PyPI into
#                                      # ./.venv-gpu, and .venv-gpu/affectd-gpu.env naming the
#                                      # library and the CUDA libraries' folders
#   scripts/install-deps.sh --system --gpu   # the GPU build into /opt/affectd/gpu, its library
#                                      # in /opt/affectd/onnxruntime/lib, and a unit drop-in
#                                      # giving the daemon the CUDA libraries' folders
# GPU: needs an NVIDIA driver >= 580 (CUDA 13). TensorRT is optional (see below).
set -euo pipefail
cd "$(dirname "$0")/.."

system=0
gpu=0
for arg in "$@"; do
  case "$arg" in
    --system) system=1 ;;
    --gpu) gpu=1 ;;
    *) echo "install-deps: unknown option $arg (--system, --gpu)" >&2; exit 2 ;;
  esac
done

ORT_VERSION=1.31.1
PACKAGES=(
  pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools
  libgstrtspserver-1.0-dev gstreamer1.0-rtsp
  mosquitto mosquitto-clients python3-venv openssl
  prometheus chromium systemd
)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found: install Rust >= 1.92 (rustup) first" >&2
  exit 1
fi

lib=".venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}"
if [ ! -f "$lib" ]; then
  echo "install-deps: installing onnxruntime==${ORT_VERSION} (PyPI) into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "onnxruntime==${ORT_VERSION}"
fi
lib=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION})

if [ "$gpu" = 1 ]; then
  # The onnxruntime-gpu wheel and its extras pull the CUDA runtime, cuBLAS, cuFFT, cuRAND,
  # NVRTC and cuDNN as nvidia-* wheels (real files, about 2 GB). Their libraries carry no
  # RUNPATH to each other, so the daemon gets their folders on LD_LIBRARY_PATH.
  gvenv=.venv-gpu
  [ "$system" = 1 ] && gvenv=/opt/affectd/gpu
  if ! ls "$gvenv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so >/dev/null 2>&1; then
    echo "install-deps: installing onnxruntime-gpu[cuda,cudnn]==${ORT_VERSION} (PyPI) into $gvenv"
    $SUDO python3 -m venv "$gvenv"
    $SUDO "$gvenv/bin/pip" install -q --disable-pip-version-check "onnxruntime-gpu[cuda,cudnn]==${ORT_VERSION}"
  fi
  gcapi=$(ls -d "$gvenv"/lib/python3*/site-packages/onnxruntime/capi)
  glib="$(cd "$gcapi" && pwd)/libonnxruntime.so.${ORT_VERSION}"
  cuda_dirs=$(find "$(cd "$gvenv" && pwd)"/lib/python3*/site-packages/nvidia -type d -name lib 2>/dev/null | sort | paste -sd: -)
  # TensorRT 10 (libnvinfer.so.10) is not on PyPI proper: `tensorrt-cu13-libs` there is a stub
  # fetching from NVIDIA's index. Where that index is reachable:
  #   $gvenv/bin/pip install --extra-index-url https://pypi.nvidia.com "tensorrt-cu13-libs>=10,<11"
  # Without it the daemon logs once that TensorRT is unavailable and uses CUDA.
  trt_dirs=$(find "$(cd "$gvenv" && pwd)"/lib/python3*/site-packages -maxdepth 2 -type d -name tensorrt_libs 2>/dev/null | paste -sd: -)
  [ -n "$trt_dirs" ] && cuda_dirs="$cuda_dirs:$trt_dirs"
  $SUDO tee "$gvenv/affectd-gpu.env" >/dev/null <<ENV
# Written by scripts/install-deps.sh --gpu: ONNX Runtime GPU and the CUDA libraries from PyPI.
ORT_DYLIB_PATH=$glib
LD_LIBRARY_PATH=$cuda_dirs
ENV
  if [ "$system" = 1 ]; then
    # The GPU build of the library replaces the CPU one where the config and the unit look;
    # its CPU provider serves the CPU paths unchanged.
    $SUDO install -d /opt/affectd/onnxruntime/lib
    $SUDO install -m 0644 "$glib" "$gcapi"/libonnxruntime_providers_shared.so \
      "$gcapi"/libonnxruntime_providers_cuda.so "$gcapi"/libonnxruntime_providers_tensorrt.so \
      /opt/affectd/onnxruntime/lib/
    $SUDO install -d /etc/systemd/system/affectd.service.d
    printf '[Service]\nEnvironment=LD_LIBRARY_PATH=%s\n' "$cuda_dirs" \
      | $SUDO tee /etc/systemd/system/affectd.service.d/gpu.conf >/dev/null
    command -v systemctl >/dev/null && $SUDO systemctl daemon-reload 2>/dev/null || true
  fi
  if command -v nvidia-smi >/dev/null; then
    driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1)
    if [ "${driver%%.*}" -lt 580 ] 2>/dev/null; then
      echo "install-deps: NVIDIA driver $driver is older than 580: CUDA 13 will not load" >&2
    fi
  else
    echo "install-deps: no nvidia-smi: no NVIDIA driver here; the GPU providers will not load" >&2
  fi
  echo "install-deps: GPU ONNX Runtime: $glib (environment in $gvenv/affectd-gpu.env)"
fi

if [ "$system" = 1 ] && [ "$gpu" = 0 ]; then
  $SUDO install -d /opt/affectd/onnxruntime/lib
  $SUDO install -m 0644 "$lib" .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime_providers_shared.so /opt/affectd/onnxruntime/lib/
fi
echo "install-deps: ok (ONNX Runtime: $lib)"
