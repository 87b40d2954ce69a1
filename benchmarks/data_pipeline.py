"""Data pipeline alone vs the model step, in images per second, on this machine.

Measures (1) decoding every PNG of a split (what an uncached epoch would pay), (2) one epoch of
the cached dataset with the training augmentation (workers 0 and 1), and (3) the training step
(forward + backward + optimiser) of the config's model on batches of that crop size, with bf16
autocast and in fp32.

    python benchmarks/data_pipeline.py configs/camvid/unet.yaml [--steps 6]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from structseg._io import load_image, load_label
from structseg.config import load_config
from structseg.engine.runtime import amp_dtype, autocast, set_threads
from structseg.engine.trainer import build_datasets, epoch_batches
from structseg.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps (after 2 warm-up steps)")
    a = ap.parse_args()
    cfg = load_config(a.config)
    set_threads(cfg.train.threads)
    train_ds, _ = build_datasets(cfg, progress=False)
    n = len(train_ds)
    t = time.perf_counter()
    for img, lab in train_ds.pairs:
        load_image(img), load_label(lab)
    decode = n / (time.perf_counter() - t)

    results = {}
    bs = cfg.train.batch_size
    for workers in (0, 1):
        train_ds.set_epoch(0)
        loader = torch.utils.data.DataLoader(train_ds, batch_sampler=epoch_batches(n, bs, 0, 0), num_workers=workers)
        t = time.perf_counter()
        seen = sum(x.shape[0] for x, _ in loader)
        results[workers] = seen / (time.perf_counter() - t)

    device = torch.device("cpu")
    x, y = next(iter(torch.utils.data.DataLoader(train_ds, batch_sampler=epoch_batches(n, bs, 0, 0))))
    x = x.contiguous(memory_format=torch.channels_last)
    steps = {}
    for label, dtype in (("bf16 autocast", amp_dtype(cfg.train.amp, device)), ("fp32", None)):
        torch.manual_seed(0)
        model = create_model(cfg.model.name, train_ds.classes.num_classes, **cfg.model.args)
        model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters())
        times = []
        for i in range(a.steps + 2):
            t = time.perf_counter()
            with autocast(device, dtype):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, ignore_index=train_ds.classes.ignore_index)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t)
        times.sort()
        steps[label] = bs / times[len(times) // 2]
    step = steps["bf16 autocast"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"config: {a.config} ({n} train images, crop {cfg.augment.crop_size}, batch {bs})")
    print(f"{'stage':<44} {'img/s':>8}")
    print(f"{'decode PNG (image + label), no cache':<44} {decode:>8.1f}")
    print(f"{'cached + augmentation, workers=0':<44} {results[0]:>8.1f}")
    print(f"{'cached + augmentation, workers=1':<44} {results[1]:>8.1f}")
    for label, v in steps.items():
        print(f"{'model train step, %s (median of %d)' % (label, a.steps):<44} {v:>8.1f}")
    print(f"bf16 speed-up of the train step: {steps['bf16 autocast'] / steps['fp32']:.2f}x")
    print(f"augmentation share of a workers=0 step: {100 * step / results[0]:.1f} %")


if __name__ == "__main__":
    main()
