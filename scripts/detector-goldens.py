#!/usr/bin/env python3
"""Reference person detections for tests/detect.rs: the bundled NanoDet-g ONNX model run by
the PyPI `onnxruntime`, decoded by a numpy re-implementation of NanoDet's own post-processing.

    .venv/bin/python scripts/detector-goldens.py [--out tests/fixtures/detector-goldens.json]

Needs numpy, onnxruntime and pillow in the venv, and gst-launch-1.0 (GStreamer's base and good
plugins plus an H.264 decoder, the ones affectd itself needs) on the PATH.

The post-processing follows RangiLyu/nanodet as of v0.4.2, the release line NanoDet-g belongs
to (config/legacy_v0.x_configs/nanodet-g.yml; `GFLHead.get_bboxes_single` in
nanodet/model/head/gfl_head.py, `distance2bbox` in nanodet/util/box_transform.py,
`multiclass_nms` / `batched_nms` in nanodet/model/module/nms.py; unchanged in substance at
master, be9b4a9):

- anchor point of cell (row, col) at stride s: ((col + 0.5) s, (row + 0.5) s)
  (`get_single_level_center_point`);
- `Integral`: per side, softmax over the reg_max + 1 = 11 bins, dotted with 0, 1, ..., 10,
  times the stride;
- per level, when it has more than `nms_pre` = 1000 cells, only the 1000 with the highest
  best-class score are kept;
- `distance2bbox` clamps every box to the network input (0..416) before NMS;
- `multiclass_nms`: every (cell, class) with score > score_thr is a candidate; NMS per class
  (the class-offset trick of `batched_nms`, torchvision semantics: a box is dropped when its
  IoU with a kept one is > iou_thr); the kept boxes of all classes sorted by score and cut at
  `max_num`; the model's outputs already have the sigmoid applied (`cut` records the
  score of the last box kept when that cap was reached);
- the boxes are mapped back through the inverse of the resize and clipped to the image
  (`warp_boxes`).

Two parameter sets are written: `official` (NanoDet's own: score 0.05, IoU 0.6, 100 boxes) and
`daemon` (affectd's defaults: `[detect] confidence` 0.25, `iou` 0.45, `max_detections` 100).

Pre-processing is NOT NanoDet's: NanoDet warps with cv2.warpPerspective (no half-pixel
alignment, 5-bit fixed-point weights, uint8 result), which moves the sampling grid by ~0.4
source pixels and changes scores by far more than the 1e-4 the test allows. The goldens test
the decode, so this script builds exactly the tensor affectd's letterbox builds
(src/detect/letterbox.rs: aspect kept, centred, border 0, bilinear with pixel centres aligned,
BGR, (v - mean) / std, all in float32 in the same order of operations) and records its sha256;
tests/detect.rs checks affectd's tensor against that hash before it compares boxes.

Frames: vtest.mp4 is decoded by gst-launch-1.0 with affectd's own decode pipeline
(`decodebin ! videoconvert ! video/x-raw,format=RGB`, as src/ingest/file_frames.rs); the PNG
is read by pillow and converted to RGB as the `image` crate does (grey replicated). Each
frame's RGB sha256 is recorded too, so a different decoder shows up as such.

`track` (vtest, frames 0-199, daemon set): which person each box belongs to, for the tracker
test. Linked by `link_persons` below only where the continuation into the next frame is
unambiguous, so an identity can cut a person into pieces but never joins two; the identities
the tracker test scores (seen >= 10 frames at score >= 0.6) were checked by eye on crops
(`--sheet DIR` renders every frame with its ids).
"""

import argparse
import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "engines/nanodet-g-416.toml"

# Frames with goldens. vtest: the first 20 s (every frame, for the tracker test) and a few
# later ones; basketball1.png: the one still.
VTEST = "tests/fixtures/vtest.mp4"
VTEST_SIZE = (768, 576)
VTEST_FRAMES = list(range(200)) + [250, 400, 550, 700, 790]
OFFICIAL_FRAMES = [0, 50, 100, 150, 199, 400, 700]
STILL = "tests/fixtures/basketball1.png"

PARAMS = {
    "official": {"score_thr": 0.05, "iou_thr": 0.6, "max_num": 100},
    "daemon": {"score_thr": 0.25, "iou_thr": 0.45, "max_num": 100},
}
NMS_PRE = 1000
SPLIT_THR = 10000

F32 = np.float32


# ---------------------------------------------------------------- frames


def vtest_frames(wanted):
    """RGB frames of vtest.mp4 by index, decoded as affectd decodes them."""
    w, h = VTEST_SIZE
    size = w * h * 3
    assert (w * 3) % 4 == 0, "GStreamer pads RGB rows to 4 bytes; this reader does not"
    cmd = [
        "gst-launch-1.0", "-q", "filesrc", f"location={ROOT / VTEST}", "!", "decodebin", "!",
        "videoconvert", "!", "video/x-raw,format=RGB", "!", "fdsink", "fd=1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    out, index, last = {}, 0, max(wanted)
    while index <= last:
        buf = proc.stdout.read(size)
        if len(buf) < size:
            break
        if index in wanted:
            out[index] = np.frombuffer(buf, np.uint8).reshape(h, w, 3)
        index += 1
    proc.stdout.close()
    proc.wait()
    missing = sorted(set(wanted) - set(out))
    if missing:
        sys.exit(f"vtest.mp4 decoded fewer frames than needed (missing {missing[:5]})")
    return out


def still_frame(path):
    from PIL import Image

    with Image.open(ROOT / path) as img:
        if img.mode not in ("L", "RGB"):
            sys.exit(f"{path}: mode {img.mode} not handled")
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


# ---------------------------------------------------------------- affectd's letterbox


def letterbox(m, rgb):
    """affectd's Preprocessor::fill, step for step in float32. Returns (CHW tensor, lb)."""
    src_h, src_w = rgb.shape[:2]
    dst_w, dst_h = m["input_width"], m["input_height"]
    scale = min(F32(dst_w) / F32(src_w), F32(dst_h) / F32(src_h))
    cw = min(max(int(np.round(F32(src_w) * scale)), 1), dst_w)
    ch = min(max(int(np.round(F32(src_h) * scale)), 1), dst_h)
    # Rust's f32::round rounds halves away from zero; np.round to even. Check no half case.
    for v in (F32(src_w) * scale, F32(src_h) * scale):
        assert v - np.floor(v) != F32(0.5), "half-way content size: rounding differs"
    px, py = (dst_w - cw) // 2, (dst_h - ch) // 2

    def taps(n, src):
        ratio = F32(src) / F32(n)
        i = np.arange(n, dtype=F32)
        s = np.clip((i + F32(0.5)) * ratio - F32(0.5), F32(0), F32(src - 1)).astype(F32)
        i0 = np.floor(s).astype(np.int64)
        i1 = np.minimum(i0 + 1, src - 1)
        return i0, i1, (s - i0.astype(F32)).astype(F32)

    x0, x1, wx = taps(cw, src_w)
    y0, y1, wy = taps(ch, src_h)
    order = [2, 1, 0] if m["channel_order"] == "bgr" else [0, 1, 2]
    mean = np.array(m["mean"], dtype=F32)
    std = np.array(m["std"], dtype=F32)
    mul = (F32(1.0) / std).astype(F32)
    add = (-mean / std).astype(F32)
    pad = F32(m.get("pad_value", 114))
    out = np.empty((3, dst_h, dst_w), dtype=F32)
    src = rgb.astype(F32)
    for c in range(3):
        plane = src[:, :, order[c]]
        r0, r1 = plane[y0], plane[y1]  # [ch, src_w]
        wxr = wx[None, :]
        top = r0[:, x0] + (r0[:, x1] - r0[:, x0]) * wxr
        bot = r1[:, x0] + (r1[:, x1] - r1[:, x0]) * wxr
        v = top + (bot - top) * wy[:, None]
        out[c].fill(pad * mul[c] + add[c])
        out[c, py : py + ch, px : px + cw] = v * mul[c] + add[c]
    assert out.dtype == F32
    return out, {"scale": float(scale), "pad_x": px, "pad_y": py}


# ---------------------------------------------------------------- NanoDet's post-processing


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def nms(boxes, scores, iou_thr):
    """torchvision.ops.nms: indices kept, highest score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        iou = inter / (area[i] + area[rest] - inter)
        order = rest[~(iou > iou_thr)]
    return np.array(keep, dtype=np.int64)


def nanodet_postprocess(m, levels, params):
    """`get_bboxes_single` + `multiclass_nms` for one image. `levels`: per stride (scores
    [cells, C] after sigmoid, regs [cells, 4 * bins]). Returns boxes [k, 4] in network-input
    pixels, scores [k], labels [k], best first."""
    h, w = m["input_height"], m["input_width"]
    bins = m["reg_bins"]
    project = np.linspace(0, bins - 1, bins, dtype=F32)
    all_boxes, all_scores = [], []
    for stride, (scores, regs) in zip(m["strides"], levels):
        gh, gw = -(-h // stride), -(-w // stride)
        ys, xs = np.meshgrid(
            (np.arange(gh, dtype=F32) + F32(0.5)) * F32(stride),
            (np.arange(gw, dtype=F32) + F32(0.5)) * F32(stride),
            indexing="ij",
        )
        centres = np.stack([xs.ravel(), ys.ravel()], axis=-1)
        assert len(centres) == len(scores) == len(regs)
        dist = softmax(regs.reshape(-1, 4, bins), axis=-1) @ project * F32(stride)
        if len(scores) > NMS_PRE:
            top = np.argsort(-scores.max(axis=1), kind="stable")[:NMS_PRE]
            centres, dist, scores = centres[top], dist[top], scores[top]
        boxes = np.stack(
            [
                np.clip(centres[:, 0] - dist[:, 0], 0, w),
                np.clip(centres[:, 1] - dist[:, 1], 0, h),
                np.clip(centres[:, 0] + dist[:, 2], 0, w),
                np.clip(centres[:, 1] + dist[:, 3], 0, h),
            ],
            axis=-1,
        ).astype(F32)
        all_boxes.append(boxes)
        all_scores.append(scores)
    boxes = np.concatenate(all_boxes)
    scores = np.concatenate(all_scores)
    cell, label = np.nonzero(scores > F32(params["score_thr"]))
    cand_boxes, cand_scores = boxes[cell], scores[cell, label]
    if len(cand_scores) == 0:
        return np.zeros((0, 4), F32), np.zeros(0, F32), np.zeros(0, np.int64)
    if len(cand_boxes) < SPLIT_THR:
        offsets = label.astype(F32) * (cand_boxes.max() + F32(1))
        keep = nms(cand_boxes + offsets[:, None], cand_scores, params["iou_thr"])
    else:
        keep = np.concatenate(
            [
                np.nonzero(label == c)[0][
                    nms(cand_boxes[label == c], cand_scores[label == c], params["iou_thr"])
                ]
                for c in np.unique(label)
            ]
        )
        keep = keep[np.argsort(-cand_scores[keep], kind="stable")]
    keep = keep[: params["max_num"]]
    return cand_boxes[keep], cand_scores[keep], label[keep]


def split_outputs(m, outputs):
    """The model's six outputs as (scores, regs) per stride, told apart by shape."""
    h, w = m["input_height"], m["input_width"]
    levels = []
    for stride in m["strides"]:
        cells = (-(-h // stride)) * (-(-w // stride))
        scores = [o for o in outputs if o.shape[1:] == (cells, m["num_classes"])]
        regs = [o for o in outputs if o.shape[1:] == (cells, 4 * m["reg_bins"])]
        assert len(scores) == 1 and len(regs) == 1, [o.shape for o in outputs]
        levels.append((scores[0][0], regs[0][0]))
    return levels


def persons_in_frame(m, boxes, scores, labels, lb, width, height):
    """Person boxes mapped back to the frame and clipped (`warp_boxes`), best first."""
    out = []
    for b, s, c in zip(boxes.astype(np.float64), scores, labels):
        if c != m["person_class"]:
            continue
        x1, y1, x2, y2 = b
        x1, x2 = ((np.array([x1, x2]) - lb["pad_x"]) / lb["scale"]).clip(0, width)
        y1, y2 = ((np.array([y1, y2]) - lb["pad_y"]) / lb["scale"]).clip(0, height)
        out.append([round(float(v), 4) for v in (x1, y1, x2, y2)] + [round(float(s), 7)])
    return out


# ---------------------------------------------------------------- person identities


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def link_persons(frames, min_iou=0.6, max_other=0.3):
    """Conservative identities for consecutive frames' boxes: a box continues the previous
    frame's box it overlaps most when that pair is unambiguous: IoU >= `min_iou`, and neither
    box overlaps any other box of the other frame by more than `max_other`. Anything else
    (a crossing, a pair walking together, a missed frame) starts a new identity, so an identity
    can cut a real person into pieces but never joins two. Returns per frame a list of ids."""
    ids, prev, next_id = [], [], 0
    for persons in frames:
        frame_ids = [None] * len(persons)
        for i, box in enumerate(persons):
            overlaps = sorted(((iou(box, q), j) for j, q in enumerate(prev)), reverse=True)
            if not overlaps or overlaps[0][0] < min_iou:
                continue
            best, j = overlaps[0]
            if len(overlaps) > 1 and overlaps[1][0] > max_other:
                continue
            back = [iou(prev[j], q) for k, q in enumerate(persons) if k != i]
            if back and max(back) > max_other:
                continue
            frame_ids[i] = ids[-1][j]
        for i in range(len(persons)):
            if frame_ids[i] is None:
                frame_ids[i] = next_id
                next_id += 1
        ids.append(frame_ids)
        prev = persons
    return ids


# ---------------------------------------------------------------- main


def write_sheet(directory, name, rgb, persons, ids):
    from PIL import Image, ImageDraw

    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    for p, pid in zip(persons, ids):
        draw.rectangle(p[:4], outline=(255, 0, 0))
        draw.text((p[0] + 2, p[1] + 2), f"{pid} {p[4]:.2f}", fill=(255, 255, 0))
    img.save(Path(directory) / f"{name}.png")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/detector-goldens.json"))
    ap.add_argument("--sheet", help="also render the vtest frames with person ids into DIR")
    args = ap.parse_args()

    with open(MANIFEST, "rb") as f:
        m = tomllib.load(f)
    assert m["layout"] == "nanodet"
    model = MANIFEST.parent / m["model"]
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert sha == m["sha256"], "engine file differs from its manifest"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    images = []
    sources = [(VTEST, i, rgb) for i, rgb in sorted(vtest_frames(set(VTEST_FRAMES)).items())]
    sources.append((STILL, 0, still_frame(STILL)))
    for path, index, rgb in sources:
        height, width = rgb.shape[:2]
        tensor, lb = letterbox(m, rgb)
        outputs = session.run(None, {input_name: tensor[None]})
        levels = split_outputs(m, outputs)
        entry = {
            "file": path,
            "frame": index,
            "width": width,
            "height": height,
            "rgb_sha256": hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest(),
            "input_sha256": hashlib.sha256(tensor.astype("<f4").tobytes()).hexdigest(),
            "letterbox": lb,
            "persons": {},
        }
        for name, params in PARAMS.items():
            if name == "official" and path == VTEST and index not in OFFICIAL_FRAMES:
                continue
            boxes, scores, labels = nanodet_postprocess(m, levels, params)
            entry["persons"][name] = persons_in_frame(m, boxes, scores, labels, lb, width, height)
            # When `max_num` boxes of all classes were kept, persons scoring below the last
            # kept box may have been cut for other classes' boxes: a person-only detector
            # (affectd) keeps them. The test compares persons above this score only.
            full = len(scores) == params["max_num"]
            entry.setdefault("cut", {})[name] = float(scores[-1]) if full else None
        images.append(entry)
        print(f"{path} #{index}: " + ", ".join(f"{k} {len(v)}" for k, v in entry["persons"].items()))

    # Person identities over vtest's first 20 s (daemon set).
    clip = [e for e in images if e["file"] == VTEST and e["frame"] < 200]
    assert [e["frame"] for e in clip] == list(range(200))
    ids = link_persons([e["persons"]["daemon"] for e in clip])
    for e, frame_ids in zip(clip, ids):
        e["track"] = frame_ids
    if args.sheet:
        Path(args.sheet).mkdir(parents=True, exist_ok=True)
        frames = vtest_frames(set(range(200)))
        for e in clip:
            write_sheet(args.sheet, f"vtest-{e['frame']:03}", frames[e["frame"]],
                        e["persons"]["daemon"], e["track"])

    doc = {
        "about": "Person detections of engines/nanodet-g-416.onnx, decoded by NanoDet's own "
        "post-processing re-implemented in numpy; written by scripts/detector-goldens.py, "
        "see tests/fixtures/README.md. Boxes in frame pixels: [x1, y1, x2, y2, score], best first.",
        "generator": "scripts/detector-goldens.py",
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "model": {"file": f"engines/{m['model']}", "sha256": sha},
        "params": PARAMS,
        "nms_pre": NMS_PRE,
        "images": images,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
