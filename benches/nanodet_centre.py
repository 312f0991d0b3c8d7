"""Which anchor-point convention fits NanoDet-g on real footage: cell corner (col * s) or cell
centre ((col + 0.5) * s)?

The camera in vtest.mp4 is fixed, so the median of frames spread over the clip is the empty
background and |frame - background| marks the people. For each stride-8 detection (score >= 0.6;
the walkers are small and only that level fires) decoded with offset 0, 0.5 and 1, we measure how
much of the foreground near the box falls inside it, and for 0.5 how far the foreground's
centroid lies from the box centre.

usage: .venv/bin/python benches/nanodet_centre.py   (from the repository root; needs gst-launch-1.0)
"""

import os
import subprocess
import tempfile

import numpy as np
import onnxruntime as ort

W, H = 768, 576
MEAN = np.array([103.53, 116.28, 123.675], np.float32)
STD = np.array([57.375, 57.12, 58.395], np.float32)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vtest.rgb")
        subprocess.run(
            ["gst-launch-1.0", "-q", "filesrc", "location=tests/fixtures/vtest.mp4", "!",
             "decodebin", "!", "videoconvert", "!", "video/x-raw,format=RGB", "!",
             "filesink", f"location={path}"],
            check=True,
        )
        raw = np.fromfile(path, dtype=np.uint8).reshape(-1, H, W, 3)
    sess = ort.InferenceSession("engines/nanodet-g-416.onnx", providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    s = 416 / W
    ch = round(H * s)
    pad = (416 - ch) // 2
    xs = np.clip(((np.arange(416) + 0.5) / s - 0.5).round().astype(int), 0, W - 1)
    ys = np.clip(((np.arange(ch) + 0.5) / s - 0.5).round().astype(int), 0, H - 1)
    bg = np.median(raw[::10][:80].astype(np.int16), axis=0)
    fits = {0.0: [], 0.5: [], 1.0: []}
    dx, dy = [], []
    for fi in range(0, len(raw), 15):
        f = raw[fi]
        fg = np.abs(f.astype(np.int16) - bg).max(-1) > 40
        img = np.zeros((416, 416, 3), np.float32)
        img[pad:pad + ch] = f[ys][:, xs][:, :, ::-1]
        x = ((img - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)
        outs = [o[0] for o in sess.run(None, {name: x}) if o.shape[1] == 52 * 52]
        cls, reg = sorted(outs, key=lambda o: -o.shape[1])
        keep = np.where(cls[:, 0] >= 0.6)[0]
        r = reg[keep].reshape(-1, 4, 11)
        p = np.exp(r - r.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        dist = (p * np.arange(11)).sum(-1) * 8
        for off, fit in fits.items():
            cx, cy = (keep % 52 + off) * 8, (keep // 52 + off) * 8
            b = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], 1)
            b[:, [0, 2]] /= s
            b[:, [1, 3]] = (b[:, [1, 3]] - pad) / s
            for x1, y1, x2, y2 in b:
                w, h = x2 - x1, y2 - y1
                X1, Y1 = int(np.clip(x1 - w / 2, 0, W)), int(np.clip(y1 - h / 4, 0, H))
                X2, Y2 = int(np.clip(x2 + w / 2, 0, W)), int(np.clip(y2 + h / 4, 0, H))
                yy, xx = np.nonzero(fg[Y1:Y2, X1:X2])
                if len(xx) < 50:
                    continue
                xx, yy = xx + X1, yy + Y1
                fit.append(((xx >= x1) & (xx < x2) & (yy >= y1) & (yy < y2)).mean())
                if off == 0.5:
                    dx.append(xx.mean() - (x1 + x2) / 2)
                    dy.append(yy.mean() - (y1 + y2) / 2)
    for off, fit in fits.items():
        print(f"offset {off}: share of nearby foreground inside the box {np.mean(fit):.3f} (n={len(fit)})")
    print(f"offset 0.5: foreground centroid - box centre: dx {np.median(dx):+.2f}, dy {np.median(dy):+.2f} "
          f"frame px (half a stride-8 cell is {4 / s:.1f} px)")


if __name__ == "__main__":
    main()
