"""Mixed-radix integer codes: how the lattice builds pack a point's digits into one int64."""
from __future__ import annotations


def strides(spans: list[int]) -> list[int]:
    """Mixed-radix place values for digits with the given spans (first most significant)."""
    strides = [1] * len(spans)
    for k in range(len(spans) - 2, -1, -1):
        strides[k] = strides[k + 1] * int(spans[k + 1])
    return strides


def fits_int64(spans: list[int]) -> bool:
    """Whether every code with digits of these spans is below 2^62 (room for sums and offsets in int64)."""
    total = 1
    for sp in spans:
        total *= int(sp)
    return total < 2 ** 62
