"""Model zoo cost on this machine: parameters, GMACs, forward latency (fp32 and bf16) and training speed.

For every model of ``create_model`` (default arguments, 11 classes) at 360x480:
- forward latency, batch 1, eval mode, channels-last, no grad: median of ``--repeats`` runs after a
  warm-up, in fp32 and under bf16 autocast;
- training images/s: SGD steps (forward, cross-entropy, backward, update) on batches of ``--batch``
  full-size images under bf16 autocast (what ``train.amp: auto`` does on this CPU), median step time.
Before every timed block the script waits until the machine is idle (< 10 % busy).

    python benchmarks/models.py [--models unet,enet] [--repeats 3] [--steps 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from structseg.models import create_model, list_models
from structseg.models.profile import count_macs, count_parameters, latency_ms

sys.path.insert(0, str(Path(__file__).parent))
from crf_speed import wait_idle  # noqa: E402


def step_images_per_s(model: torch.nn.Module, classes: int, h: int, w: int, batch: int, steps: int,
                      bf16: bool = True, optimizer: str = "sgd") -> float:
    """Images/s of full training steps (forward, cross-entropy, backward, update) on random batches, channels-last:
    the median over ``steps`` timed steps after one warm-up step, each started on an idle machine."""
    torch.manual_seed(0)
    model = model.train().to(memory_format=torch.channels_last)
    opt = (torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=1e-4))
    x = torch.randn(batch, 3, h, w).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch, h, w))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(steps):
        wait_idle()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="comma-separated names (default: all)")
    ap.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    h, w = a.size
    names = a.models.split(",") if a.models else list_models()
    rows = []
    for name in names:
        with torch.device("meta"):
            meta = create_model(name, a.classes)
        model = create_model(name, a.classes)
        row = {"model": name, "params_m": count_parameters(model) / 1e6, "gmacs": count_macs(meta, h, w) / 1e9}
        wait_idle()
        row["fp32_ms"] = latency_ms(model, h, w, repeats=a.repeats)
        wait_idle()
        row["bf16_ms"] = latency_ms(model, h, w, dtype=torch.bfloat16, repeats=a.repeats)
        del model
        row["train_img_s"] = step_images_per_s(create_model(name, a.classes), a.classes, h, w, a.batch, a.steps)
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    print(f"\n{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; input {h}x{w}, "
          f"{a.classes} classes; latency: batch 1, median of {a.repeats}; training: batch {a.batch}, bf16 autocast, "
          f"median of {a.steps} steps")
    print("| model | params (M) | GMACs | fp32 ms | bf16 ms | bf16 speed-up | train img/s (bf16) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params_m']:.2f} | {r['gmacs']:.1f} | {r['fp32_ms']:.0f} | {r['bf16_ms']:.0f} | "
              f"{r['fp32_ms'] / r['bf16_ms']:.2f}x | {r['train_img_s']:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
