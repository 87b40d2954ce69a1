"""PyTorch's CPU softmax over short rows: why ``dense_crf.softmax_rows`` pads rows shorter than 16.

    python benchmarks/softmax_rows.py [--rows 172800] [--threads 2] [--repeats 20]

For each class count C: the milliseconds of ``torch.softmax(x, 1)`` on an ``(N, C)`` float32 tensor (N = one
480x360 frame's pixels, the CRF's layout), and of the same rows padded with -inf to 16 columns first (the
padded softmax, then the first C columns), of four elementwise passes (max, exp, sum, divide), and of
``dense_crf.softmax_rows`` (which picks among them by C), mean of ``--repeats`` after one warm-up call.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from structseg.structured.dense_crf import softmax_rows


def four_passes(x: torch.Tensor) -> torch.Tensor:
    e = (x - x.amax(1, keepdim=True)).exp_()
    return e.div_(e.sum(1, keepdim=True))


def ms(fn, x, repeats: int) -> float:
    fn(x)
    t = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return 1000 * (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=172800)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# {a.rows} rows, {a.threads} threads, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| C | softmax(x, 1) ms | padded to 16 ms | four passes ms | softmax_rows ms |")
    print("|---|---|---|---|---|")
    for c in (2, 3, 8, 11, 12, 16, 21, 32, 59, 150):
        x = torch.randn(a.rows, c)
        plain = ms(lambda v: torch.softmax(v, 1), x, a.repeats)
        padded = ms(lambda v: torch.softmax(F.pad(v, (0, 16 - c), value=-math.inf), 1)[:, :c].contiguous(), x,
                    a.repeats) if c < 16 else float("nan")
        passes = ms(four_passes, x, a.repeats)
        used = ms(softmax_rows, x, a.repeats)
        print(f"| {c} | {plain:.1f} | {padded:.1f} | {passes:.1f} | {used:.1f} |", flush=True)


if __name__ == "__main__":
    main()
