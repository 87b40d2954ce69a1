"""What a fresh (N, C) result buffer costs on the CPU: softmax and exp of a (172800, C) float32 tensor
(a 480x360 frame's marginals), each call allocating its result.

Run it twice, as is and with glibc's mmap threshold raised so that freed large blocks are reused:

    python benchmarks/fresh_buffer_cost.py --threads 1
    MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000 python benchmarks/fresh_buffer_cost.py --threads 1

Above the threshold (32 MiB by default at most: C >= 49 here) every result is new pages from the kernel, and the
difference between the two runs is their page faults. This is why the dense CRF's inference loop writes Q in
place block by block (``structseg.structured.dense_crf._blocked_iterations``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def median_ms(fn, repeats: int = 15) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--classes", default="21,32,59,150")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}, {a.threads} thread(s)")
    print("| C | MiB per buffer | softmax ms | exp ms |\n|---|---|---|---|")
    for c in map(int, a.classes.split(",")):
        x = torch.randn(172800, c)
        print(f"| {c} | {x.numel() * 4 / 2 ** 20:.1f} | {median_ms(lambda: torch.softmax(x, 1)):.1f} | "
              f"{median_ms(lambda: x.exp()):.1f} |", flush=True)


if __name__ == "__main__":
    main()
