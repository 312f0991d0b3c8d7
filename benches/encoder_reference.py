"""Python side of benches/encoder.rs: the same ViT-B/32 vision tower in PyTorch (open_clip) and
in ONNX Runtime (that tower exported to ONNX), timed on the same pixels with the same thread
count as affectd's candle encoder.

usage: encoder_reference.py PIXELS FRAMES THREADS CACHE_DIR [AFFECTD_FRAME_GRAPH PATCH_WEIGHTS]
PIXELS is raw little-endian float32, FRAMES x 3 x 224 x 224 (already normalised). The ONNX
file is exported once into CACHE_DIR (reused when present; never committed).

With AFFECTD_FRAME_GRAPH (affectd's exported frame encoder) and PATCH_WEIGHTS (raw float32,
FRAMES x P, its second input) the runtime "ort-affectd" runs affectd's graph in this same
Python ONNX Runtime session setup: the two graphs then differ in nothing but the graph.

Prints one JSON line {"ready": true, ...} with versions and checks; then for each stdin line
"RUNTIME BATCH SECONDS" (RUNTIME is torch, ort or ort-affectd) it runs the tower on the first BATCH frames
repeatedly until SECONDS have passed (at least once) and prints {"fps": frames/s, "runs": n},
so that the caller can alternate short slices of every runtime under the same machine load.

The model is open_clip `ViT-B-32` with pretrained=None (random weights: throughput does not
depend on the values). Unlike EmotionCLIP it has no subject token: 50 tokens, not 51.
"""

import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import open_clip
import torch


def activation_check(visual: torch.nn.Module) -> dict:
    """Counts the MLP activations: EmotionCLIP uses exact GELU, not QuickGELU."""
    exact = sum(isinstance(m, torch.nn.GELU) and m.approximate == "none" for m in visual.modules())
    quick = sum(type(m).__name__ == "QuickGELU" for m in visual.modules())
    if quick or exact != 12:
        raise SystemExit(f"expected 12 exact GELUs and no QuickGELU, found {exact} and {quick}")
    return {"exact_gelu": exact, "quick_gelu": quick}


def export_onnx(visual: torch.nn.Module, path: str) -> None:
    """Exports the vision tower (opset 17, dynamic batch) with the TorchScript exporter.

    nn.MultiheadAttention's inference fast path (one fused aten op) has no ONNX symbolic, so
    it is off while tracing; the exported graph spells attention out in standard ops.
    """
    tmp = path + ".partial"
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    dummy = torch.zeros(2, 3, 224, 224)
    kwargs = {}
    if "dynamo" in torch.onnx.export.__code__.co_varnames:
        kwargs["dynamo"] = False
    torch.onnx.export(
        visual,
        (dummy,),
        tmp,
        opset_version=17,
        input_names=["pixels"],
        output_names=["features"],
        dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
        **kwargs,
    )
    torch.backends.mha.set_fastpath_enabled(fastpath)
    os.replace(tmp, path)


def ort_session(path: str, threads: int) -> ort.InferenceSession:
    """A CPU session set up as affectd's (detect::open_with): no spin-waiting between runs."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def timed(run, batch: int, seconds: float) -> dict:
    runs = 0
    start = time.perf_counter()
    while True:
        run()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return {"fps": runs * batch / elapsed, "runs": runs}


def main() -> None:
    pixels, frames, threads, cache = sys.argv[1:5]
    affectd_graph, patch_weights = (sys.argv[5:7] + [None, None])[:2]
    frames, threads = int(frames), int(threads)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    visual = model.visual.eval()
    checks = activation_check(visual)
    data = np.fromfile(pixels, dtype="<f4").reshape(frames, 3, 224, 224)
    tensor = torch.from_numpy(data.copy())

    os.makedirs(cache, exist_ok=True)
    onnx_path = os.path.join(cache, f"open_clip-ViT-B-32-visual-{open_clip.__version__}.onnx")
    with torch.no_grad():
        if not os.path.exists(onnx_path):
            export_onnx(visual, onnx_path)
        reference = visual(tensor[:2]).numpy()
    sess = ort_session(onnx_path, threads)
    name = sess.get_inputs()[0].name
    onnx_out = sess.run(None, {name: data[:2]})[0]
    checks["onnx_vs_torch_max_abs"] = float(np.abs(onnx_out - reference).max())

    def torch_run(b: int):
        x = tensor[:b]

        def run():
            with torch.no_grad():
                visual(x)

        return run

    def ort_run(b: int):
        x = np.ascontiguousarray(data[:b])
        return lambda: sess.run(None, {name: x})

    runners = {"torch": torch_run, "ort": ort_run}
    if affectd_graph:
        affectd = ort_session(affectd_graph, threads)
        weights = np.fromfile(patch_weights, dtype="<f4").reshape(frames, -1)

        def affectd_run(b: int):
            feeds = {"pixels": np.ascontiguousarray(data[:b]), "patch_weights": weights[:b]}
            return lambda: affectd.run(None, feeds)

        runners["ort-affectd"] = affectd_run
    print(
        json.dumps(
            {
                "ready": True,
                "torch": torch.__version__,
                "open_clip": open_clip.__version__,
                "onnxruntime": ort.__version__,
                "torch_threads": torch.get_num_threads(),
                "onnx": onnx_path,
                "checks": checks,
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        runtime, batch, seconds = line.split()
        batch = int(batch)
        run = runners[runtime](batch)
        print(json.dumps(timed(run, batch, float(seconds))), flush=True)


if __name__ == "__main__":
    main()
