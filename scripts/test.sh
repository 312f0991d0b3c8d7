#!/usr/bin/env bash
# The test command (README command 2, and what CI runs): installs what is missing,
# checks formatting and lints, then runs every test with real GStreamer, mosquitto and ONNX Runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
. scripts/env.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# Benchmarks are compiled by clippy above but run only with `cargo bench` (BENCHMARKS.md).
cargo test --locked
