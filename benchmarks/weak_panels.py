"""Pictures of weak supervision: image | ground truth | each model's prediction, one row per image.

    python benchmarks/weak_panels.py msrc21-lite2-fpn-weak-sec msrc21-lite2-fpn-weak msrc21-lite2-fpn \
        --data ../shared/data/msrc21 --split val.txt --images 6 --out docs/img/weak_msrc21_val.png

Images are taken evenly spaced through the split (no picking); each column is titled with the model's name.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image, ImageDraw

from structseg._io import atomic_path, load_image, load_label
from structseg.data.layout import read_classes, read_split
from structseg.data.transforms import network_input
from structseg.engine.checkpoint import load_pretrained
from structseg.engine.inference import forward_logits
from structseg.engine.runtime import amp_dtype
from structseg.viz.overlay import colorize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="shipped names or checkpoints, one column each")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val.txt")
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--height", type=int, default=160, help="row height in pixels")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cpu = torch.device("cpu")
    classes = read_classes(a.data)
    models = [load_pretrained(m, cpu) for m in a.models]
    pairs = read_split(a.data, a.split)
    picks = np.linspace(0, len(pairs) - 1, a.images).round().astype(int)
    titles = ["image", "ground truth", *a.models]
    rows = []
    for i in picks:
        image, label = load_image(pairs[i][0]), load_label(pairs[i][1])
        tiles = [image, colorize(label, classes.palette, classes.ignore_index)]
        for m in models:
            logits = forward_logits(m, network_input(image, *m.normalization)[None], cpu, amp_dtype("auto", cpu))
            tiles.append(colorize(logits[0].argmax(0).numpy(), classes.palette))
        width = round(image.shape[1] * a.height / image.shape[0])
        rows.append([np.asarray(Image.fromarray(t).resize((width, a.height), Image.NEAREST)) for t in tiles])
    col = max(r[0].shape[1] for r in rows)
    gap, head = 6, 22
    canvas = Image.new("RGB", (len(titles) * (col + gap) - gap, head + len(rows) * (a.height + gap) - gap), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(titles):
        draw.text((j * (col + gap) + 4, 4), title, fill="black")
    for r, tiles in enumerate(rows):
        for j, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (j * (col + gap), head + r * (a.height + gap)))
    with atomic_path(a.out) as tmp:
        canvas.save(tmp, format="PNG")
    print(f"wrote {a.out}: {len(rows)} images of {a.split}, columns {', '.join(titles)}")


if __name__ == "__main__":
    main()
