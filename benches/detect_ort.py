"""Python onnxruntime side of benches/detect.rs: times session.run on the same letterboxed
tensors that affectd feeds its own session, with the same thread count.

usage: detect_ort.py MODEL TENSORS FRAMES THREADS SECONDS
TENSORS is raw little-endian float32, FRAMES x 3 x H x W (H, W from the model's input).
Prints one JSON object: {"fps": ..., "runs": ..., "version": ...}.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    model, tensors, frames, threads, seconds = sys.argv[1:6]
    frames, threads, seconds = int(frames), int(threads), float(seconds)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    _, c, h, w = inp.shape
    data = np.fromfile(tensors, dtype="<f4").reshape(frames, 1, c, h, w)
    for i in range(3):
        sess.run(None, {inp.name: data[i % frames]})
    runs = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        sess.run(None, {inp.name: data[runs % frames]})
        runs += 1
    elapsed = time.perf_counter() - start
    print(json.dumps({"fps": runs / elapsed, "runs": runs, "version": ort.__version__}))


if __name__ == "__main__":
    main()
