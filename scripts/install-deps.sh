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
set -euo pipefail
cd "$(dirname "$0")/.."

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

if [ "${1:-}" = "--system" ]; then
  $SUDO install -d /opt/affectd/onnxruntime/lib
  $SUDO install -m 0644 "$lib" .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime_providers_shared.so /opt/affectd/onnxruntime/lib/
fi
echo "install-deps: ok (ONNX Runtime: $lib)"
