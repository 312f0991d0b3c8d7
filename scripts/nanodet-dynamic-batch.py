#!/usr/bin/env python3
"""Makes the batch dimension of the bundled NanoDet-g ONNX model dynamic.

    .venv/bin/python scripts/nanodet-dynamic-batch.py \
        engines/nanodet-g-416.onnx engines/nanodet-g-416-dynamic.onnx

Needs the `onnx` package from PyPI (`.venv/bin/pip install onnx`; written with onnx 1.23.2).

What changes (nothing else; every weight is kept as it is):

- the input `input_1:0` becomes `[N, 3, 416, 416]` and the six outputs `[N, cells, C]`, with
  one symbolic dimension `N`;
- the graph's only batch-dependent constants: its six Reshapes (one per head output) take
  their target shape from `[1, 80, -1]` / `[1, 44, -1]` (tf2onnx built them as constant +
  an empty ScatterND) and would fold every batch into image 0. They get `[0, 80, -1]` /
  `[0, 44, -1]` instead (ONNX Reshape: 0 copies the input's dimension, here the batch), and
  the constant-building nodes, now unused, are removed.

The script refuses any other Reshape, any other node that builds a shape, or an input that is
not `[1, 3, H, W]`, so a different model is not silently half-converted. It then checks the
result with the ONNX checker and with ONNX Runtime: a batch of 3 distinct inputs gives, per
image, the outputs of the original model on that image alone (max abs difference printed).
"""

import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

BATCH = "N"


def producers(graph):
    return {o: n for n in graph.node for o in n.output}


def constant_shape(graph, name, inits):
    """The int64 vector a Reshape's shape input evaluates to, and the nodes that build it."""
    if name in inits:
        return numpy_helper.to_array(inits[name]), []
    prod = producers(graph)
    node = prod.get(name)
    # tf2onnx's pattern: Cast(Add(constant, ScatterND(Expand(0, [k]), [], []))).
    if node is None or node.op_type != "Cast":
        raise SystemExit(f"reshape shape {name}: not a constant this script knows")
    add = prod.get(node.input[0])
    if add is None or add.op_type != "Add":
        raise SystemExit(f"reshape shape {name}: expected Cast(Add(...))")
    base, scatter = add.input
    if base not in inits:
        base, scatter = scatter, base
    scatter_node = prod.get(scatter)
    if base not in inits or scatter_node is None or scatter_node.op_type != "ScatterND":
        raise SystemExit(f"reshape shape {name}: expected constant + ScatterND")
    indices = numpy_helper.to_array(inits[scatter_node.input[1]])
    if indices.size != 0:
        raise SystemExit(f"reshape shape {name}: ScatterND writes values; not handled")
    expand = prod.get(scatter_node.input[0])
    if expand is None or expand.op_type != "Expand":
        raise SystemExit(f"reshape shape {name}: expected Expand under ScatterND")
    return numpy_helper.to_array(inits[base]).astype(np.int64), [node, add]


def convert(src, dst):
    model = onnx.load(src)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    (inp,) = graph.input
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 4 or dims[0].dim_value != 1 or dims[1].dim_value != 3:
        raise SystemExit(f"input {inp.name}: expected [1, 3, H, W]")
    for n in graph.node:
        if n.op_type in ("Shape", "Tile", "ConstantOfShape", "Slice", "Gather", "Flatten"):
            raise SystemExit(f"{n.op_type} {n.name}: batch handling not checked by this script")
    dead = []
    for n in graph.node:
        if n.op_type != "Reshape":
            continue
        shape, built_by = constant_shape(graph, n.input[1], inits)
        if len(shape) != 3 or shape[0] != 1 or shape[2] != -1:
            raise SystemExit(f"Reshape {n.name}: target {shape.tolist()} is not [1, C, -1]")
        fixed = np.array([0, shape[1], -1], dtype=np.int64)
        name = f"{n.name}/shape_dynamic_batch"
        if name not in inits:
            t = numpy_helper.from_array(fixed, name)
            graph.initializer.append(t)
            inits[name] = t
        n.input[1] = name
        dead.extend(built_by)
    # Remove the shape-building nodes no longer used, then unused initializers.
    while True:
        used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
        unused = [n for n in graph.node if not any(o in used for o in n.output)]
        if not unused:
            break
        for n in unused:
            graph.node.remove(n)
    used = {x for n in graph.node for x in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    dims[0].Clear()
    dims[0].dim_param = BATCH
    del graph.value_info[:]
    for out in graph.output:
        out_dims = out.type.tensor_type.shape.dim
        for d in out_dims:
            d.Clear()
        out_dims[0].dim_param = BATCH
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    # Shape inference fills the outputs' cell and channel counts; keep N symbolic.
    onnx.checker.check_model(model, full_check=True)
    model.producer_name = "affectd scripts/nanodet-dynamic-batch.py"
    onnx.save(model, dst)
    return model


def check(src, dst):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    a = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(dst, opts, providers=["CPUExecutionProvider"])
    name = a.get_inputs()[0].name
    rng = np.random.default_rng(15)
    batch = rng.normal(0.0, 1.0, (3, 3, 416, 416)).astype(np.float32)
    together = b.run(None, {name: batch})
    worst = 0.0
    for i in range(len(batch)):
        alone = a.run(None, {name: batch[i : i + 1]})
        for x, y in zip(alone, together):
            assert x.shape[1:] == y.shape[1:] and y.shape[0] == len(batch)
            worst = max(worst, float(np.abs(x[0] - y[i]).max()))
    print("outputs:", [o.shape for o in together])
    print(f"batch of 3 vs the original model one image at a time: max abs diff {worst:.3g}")
    if worst > 1e-4:
        raise SystemExit("the dynamic-batch model does not reproduce the original")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    model = convert(sys.argv[1], sys.argv[2])
    print("input:", [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim])
    check(sys.argv[1], sys.argv[2])
