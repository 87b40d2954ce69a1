"""Training throughput of encoder/decoder pairs on this machine, to choose what to train in a CPU budget.

For every ``model:backbone`` pair: images/s of full training steps (forward, cross-entropy, backward,
AdamW update, channels-last) on random batches at the training crop, in fp32 and under bf16 autocast
(median step time after a warm-up step), and the data pipeline's cost: the time the training transform
(scale, crop, flip, colour jitter, normalisation) of a real split takes per image, from decoded images
in RAM as the trainer holds them, and its share of a step.

    python benchmarks/train_throughput.py --data ../shared/data/camvid --crop 352,352 --batch 8 \
        --pairs fpn:efficientnet_lite0,unet:efficientnet_lite0,deeplabv3plus:efficientnet_lite0 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from structseg.data.dataset import SegmentationDataset
from structseg.data.transforms import TrainTransform
from structseg.models import create_model

sys.path.insert(0, str(Path(__file__).parent))
from crf_speed import wait_idle  # noqa: E402
from models import step_images_per_s  # noqa: E402


def transform_ms_per_image(root: str, split: str, crop: tuple[int, int], n: int) -> float:
    tf = TrainTransform(crop_size=crop, scale=(0.75, 1.5))
    ds = SegmentationDataset(root, split, tf, cache=True, seed=0)
    tf.ignore_index = ds.classes.ignore_index
    n = min(n, len(ds))
    ds.preload(False)
    for i in range(n):  # decode into RAM first, as the trainer does before its first epoch
        ds[i]
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default="fpn:efficientnet_lite0,unet:efficientnet_lite0,"
                    "deeplabv3plus:efficientnet_lite0,fpn:efficientnet_lite1,fpn:efficientnet_lite2")
    ap.add_argument("--crop", default="352,352")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="../shared/data/camvid")
    ap.add_argument("--split", default="train.txt")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    crop = tuple(int(v) for v in a.crop.split(","))
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} threads, "
          f"crop {crop[0]}x{crop[1]}, batch {a.batch}, {a.classes} classes")
    data_ms = None
    if Path(a.data).is_dir():
        wait_idle()
        data_ms = transform_ms_per_image(a.data, a.split, crop, 48)
        print(f"training transform: {data_ms:.1f} ms/image ({a.data} {a.split}, decoded images in RAM)")
    rows = []
    print("| model | backbone | params (M) | fp32 img/s | bf16 img/s | data share (bf16) |")
    print("|---|---|---|---|---|---|")
    for pair in a.pairs.split(","):
        name, backbone = pair.split(":")
        params = sum(p.numel() for p in create_model(name, a.classes, backbone=backbone).parameters()) / 1e6
        fp32, bf16 = (step_images_per_s(create_model(name, a.classes, backbone=backbone), a.classes, *crop, a.batch,
                                        a.steps, bf16=b, optimizer="adamw") for b in (False, True))
        share = data_ms / 1000 / (data_ms / 1000 + 1 / bf16) if data_ms else None
        rows.append({"model": name, "backbone": backbone, "params_m": params, "fp32_img_s": fp32,
                     "bf16_img_s": bf16, "data_ms_per_image": data_ms, "data_share_bf16": share})
        print(f"| {name} | {backbone} | {params:.2f} | {fp32:.2f} | {bf16:.2f} | "
              f"{'-' if share is None else f'{share:.0%}'} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
