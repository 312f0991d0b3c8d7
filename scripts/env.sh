# Sourced by the scripts: where the ONNX Runtime library from the wheel lives.
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(ls "$(pwd)"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 2>/dev/null | head -n1)}
export ORT_DYLIB_PATH
