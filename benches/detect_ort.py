"""Python onnxruntime side of benches/detect.rs: times session.run on the same letterboxed
tensors that affectd feeds its own session, with the same thread count.

usage: detect_ort.py MODEL TENSORS FRAMES THREADS
TENSORS is raw little-endian float32, FRAMES x 3 x H x W (H, W from the model's input).
Prints {"ready": true, "version": ...}; then for each line SECONDS read from stdin it runs the
model for that long and prints {"fps": ..., "runs": ...}, so that the caller can alternate short
slices of both runtimes under the same machine load.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    model, tensors, frames, threads = sys.argv[1:5]
    frames, threads = int(frames), int(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # affectd turns intra-op spin-waiting off (src/detect/runtime.rs); compare like with like.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    _, c, h, w = inp.shape
    data = np.fromfile(tensors, dtype="<f4").reshape(frames, 1, c, h, w)
    for i in range(3):
        sess.run(None, {inp.name: data[i % frames]})
    print(json.dumps({"ready": True, "version": ort.__version__}), flush=True)
    k = 0
    for line in sys.stdin:
        seconds = float(line)
        runs = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            sess.run(None, {inp.name: data[k % frames]})
            runs += 1
            k += 1
        elapsed = time.perf_counter() - start
        print(json.dumps({"fps": runs / elapsed, "runs": runs}), flush=True)


if __name__ == "__main__":
    main()
