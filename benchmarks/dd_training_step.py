"""Training-step time of a network with and without the dual-decomposition CRF layer (seed 002's 1.3x target).

    python benchmarks/dd_training_step.py [--batch 4] [--crop 352] [--threads 1] [--repeats 3] [--only deeplabv3]
                                          [--classes 11] [--all-iterations]
    python benchmarks/dd_training_step.py --only deeplabv3 --batch 8 --crop 288 --threads 2 \
        --trained msrc21-lite2-deeplabv3 msrc21-lite2-deeplabv3-dd --data ../shared/data/msrc21 [--flush-denormal]

Full steps (bf16 autocast forward, cross-entropy, backward, SGD update) on random batches, channels-last,
11 classes, each candidate stepped in turn (so a busy machine slows every candidate alike), median of
``--repeats`` after one warm-up step each. Candidates: DeepLabV3 on EfficientNet-Lite2 at output stride 16
(the seed's network; the layer on its stride-16 logits) and FPN on Lite2 (the layer on its stride-4 grid,
and pooled to stride 8). A fresh layer's dual often rises after 1-2 solver calls, which stops it early;
``--all-iterations`` (tol 1e9) makes every step run all 5, as a trained layer does.

Why a real training run can differ from the random-input steps: ``--trained PLAIN DD`` starts the two DeepLabV3
candidates from trained weights (shipped names or checkpoints; their class count is used), ``--data ROOT``
steps on real training crops (the trainer's augmentation, ``ROOT/train.txt``, a new batch each step, the same
batches for every candidate) instead of noise, and ``--flush-denormal`` sets ``torch.set_flush_denormal(True)``.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
import torch.nn.functional as F

from structseg.data.dataset import SegmentationDataset
from structseg.data.transforms import TrainTransform
from structseg.engine.checkpoint import build_model, load_pretrained

DD = {"kind": "dual_decomposition"}
CANDIDATES = {
    "deeplabv3 os16": ("deeplabv3", {"backbone": "efficientnet_lite2", "output_stride": 16}, None),
    "deeplabv3 os16 + dd": ("deeplabv3", {"backbone": "efficientnet_lite2", "output_stride": 16}, DD),
    "fpn": ("fpn", {"backbone": "efficientnet_lite2", "decoder_channels": 128}, None),
    "fpn + dd (stride 4)": ("fpn", {"backbone": "efficientnet_lite2", "decoder_channels": 128}, DD),
    "fpn + dd (stride 8)": ("fpn", {"backbone": "efficientnet_lite2", "decoder_channels": 128}, {**DD, "grid_stride": 8}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=352)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="time only the candidates whose name starts with this")
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--all-iterations", action="store_true", help="never stop the solver loop early")
    ap.add_argument("--trained", nargs=2, metavar=("PLAIN", "DD"), help="trained DeepLabV3 weights, without / "
                    "with the layer (shipped names or checkpoints)")
    ap.add_argument("--data", help="a dataset root: step on its augmented training crops instead of noise")
    ap.add_argument("--flush-denormal", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.flush_denormal and not torch.set_flush_denormal(True):
        raise SystemExit("this CPU cannot flush denormals")
    trained = dict(zip(("deeplabv3 os16", "deeplabv3 os16 + dd"), a.trained or ()))
    models, opts = {}, {}
    for name, (arch, args, crf) in CANDIDATES.items():
        if not name.startswith(a.only) or (a.trained and name not in trained):
            continue
        if name in trained:
            model = load_pretrained(trained[name]).float()
            a.classes = model.classes.num_classes
        else:
            spec = {"name": arch, "args": args, "num_classes": a.classes, **({"crf": crf} if crf else {})}
            model = build_model(spec, (0.5,) * 3, (0.5,) * 3)
        if crf and a.all_iterations:
            model.crf.params.tol = 1e9
        models[name] = model.train().to(memory_format=torch.channels_last)
        opts[name] = torch.optim.SGD(models[name].parameters(), lr=1e-4)
    if a.data:
        tf = TrainTransform(scale=(0.75, 1.75), crop_size=(a.crop, a.crop))
        data = SegmentationDataset(a.data, "train.txt", tf)
        tf.ignore_index = data.classes.ignore_index
        order = itertools.cycle(torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist())
    y = torch.randint(0, a.classes, (a.batch, a.crop, a.crop))
    x = torch.randn(a.batch, 3, a.crop, a.crop)

    def next_batch() -> None:
        nonlocal x, y
        if a.data:
            items = [data[next(order)] for _ in range(a.batch)]
            x, y = torch.stack([i for i, _ in items]), torch.stack([t for _, t in items])
        x = x.contiguous(memory_format=torch.channels_last)

    def step(name: str) -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = models[name](x)
        loss = F.cross_entropy(out.float(), y, ignore_index=data.classes.ignore_index if a.data else -100)
        opts[name].zero_grad()
        loss.backward()
        opts[name].step()
        return time.perf_counter() - t

    next_batch()
    for name in models:
        step(name)
    times = {name: [] for name in models}
    for _ in range(a.repeats):
        next_batch()
        for name in models:
            times[name].append(step(name))
    print(f"batch {a.batch} at {a.crop}x{a.crop}, {a.classes} classes, {a.threads} thread(s), median of {a.repeats}"
          + (", all 5 solver calls" if a.all_iterations else "") + (", trained weights" if a.trained else "")
          + (f", crops of {a.data}" if a.data else ", random input") + (", denormals flushed" if a.flush_denormal else ""))
    print("| network | s / step | vs. without the layer |")
    print("|---|---|---|")
    for name, v in times.items():
        base = "deeplabv3 os16" if name.startswith("deeplabv3") else "fpn"
        ratio = statistics.median(v) / statistics.median(times[base])
        print(f"| {name} | {statistics.median(v):.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
