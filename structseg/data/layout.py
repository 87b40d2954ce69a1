"""The unified dataset layout: a root folder with split files and ``classes.json``.

A split file lists one ``image label`` pair per line, paths relative to the root.
``classes.json`` holds ``classes`` (names, in label-index order), ``ignore_index`` and an
optional ``palette`` (one ``[r, g, b]`` per class).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError


def default_palette(num_classes: int) -> list[list[int]]:
    """A distinct colour per class (the PASCAL VOC bit-interleaving scheme)."""
    palette = []
    for i in range(num_classes):
        r = g = b = 0
        c = i + 1 if num_classes > 1 else i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


@dataclass(frozen=True)
class ClassInfo:
    """Class names, the ignored label value and one colour per class."""

    names: tuple[str, ...]
    ignore_index: int
    palette: tuple[tuple[int, int, int], ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {
            "classes": list(self.names),
            "ignore_index": self.ignore_index,
            "palette": [list(c) for c in self.palette],
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "classes.json") -> "ClassInfo":
        if not isinstance(d, dict) or "classes" not in d:
            raise DataError(f"{source}: expected a JSON object with a 'classes' list")
        unknown = set(d) - {"classes", "ignore_index", "palette"}
        if unknown:
            raise DataError(f"{source}: unknown key(s) {sorted(unknown)}; expected classes, ignore_index, palette")
        names = d["classes"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DataError(f"{source}: 'classes' must be a non-empty list of names")
        ignore = d.get("ignore_index", 255)
        if not isinstance(ignore, int) or 0 <= ignore < len(names) or not 0 <= ignore <= 255:
            raise DataError(
                f"{source}: 'ignore_index' must be an integer in [{len(names)}, 255] "
                f"(outside the {len(names)} class indices), got {ignore!r}")
        palette = d.get("palette") or default_palette(len(names))
        if len(palette) != len(names) or not all(
                isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                for c in palette):
            raise DataError(f"{source}: 'palette' must hold one [r, g, b] (0-255) per class ({len(names)})")
        return cls(tuple(names), ignore, tuple(tuple(c) for c in palette))


def read_classes(root: str | Path) -> ClassInfo:
    """Read ``ROOT/classes.json``."""
    path = Path(root) / "classes.json"
    if not path.is_file():
        raise DataError(f"{path}: missing; a dataset root needs classes.json with 'classes' and 'ignore_index'")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    return ClassInfo.from_dict(d, str(path))


def read_split(root: str | Path, split: str | Path) -> list[tuple[Path, Path]]:
    """Read a split file into ``(image, label)`` absolute paths; checks that every file exists."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root is not a folder")
    split_path = Path(split) if Path(split).is_absolute() else root / split
    if not split_path.is_file():
        raise DataError(f"{split_path}: split file not found")
    pairs = []
    for lineno, line in enumerate(split_path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{split_path}:{lineno}: expected 'image label', got {line!r}")
        img, lab = root / parts[0], root / parts[1]
        for p in (img, lab):
            if not p.is_file():
                raise DataError(f"{split_path}:{lineno}: listed file {p} does not exist")
        pairs.append((img, lab))
    if not pairs:
        raise DataError(f"{split_path}: split is empty; expected 'image label' lines")
    return pairs


def write_layout(root: str | Path, classes: ClassInfo, splits: dict[str, list[tuple[str, str]]]) -> None:
    """Write ``classes.json`` and one split file per entry (relative paths) into ``root``."""
    root = Path(root)
    (root / "classes.json").write_text(json.dumps(classes.to_dict(), indent=1) + "\n")
    for name, pairs in splits.items():
        (root / name).write_text("".join(f"{a} {b}\n" for a, b in pairs))


def validate_pair(image: np.ndarray, label: np.ndarray, classes: ClassInfo, image_path: Path,
                  label_path: Path) -> None:
    """Raise a :class:`DataError` if sizes differ or label values fall outside ``[0, C) ∪ {ignore}``."""
    if image.shape[:2] != label.shape:
        raise DataError(
            f"{label_path}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs from its image "
            f"{image_path.name} {image.shape[1]}x{image.shape[0]}")
    values = np.unique(label)
    bad = values[(values >= classes.num_classes) & (values != classes.ignore_index)]
    if bad.size:
        raise DataError(
            f"{label_path}: label values {bad.tolist()[:10]} out of range; expected 0..{classes.num_classes - 1} "
            f"or ignore_index {classes.ignore_index}")
