"""Reading and writing images and label maps, with one clear error per bad file."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CheckpointError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def _open(path: Path) -> Image.Image:
    """Decode a file as a photo viewer shows it: EXIF orientation applied."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected an image file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        im = Image.open(path)
        im.load()
        im = ImageOps.exif_transpose(im)  # a portrait phone photo stored sideways is turned upright
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (cannot identify its format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: corrupt, truncated or unreadable image ({e})") from None
    return im


def _to_uint8_grey(im: Image.Image, path: Path) -> Image.Image:
    """A 16-bit, 32-bit integer or float greyscale image as 8 bits, scaled by its type's full range."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16") or (im.mode == "I" and arr.size and 0 <= arr.min() and arr.max() <= 65535):
        out = (arr.astype(np.float64) / 257.0).round()  # 0..65535 -> 0..255
    elif im.mode == "F" and arr.size and np.isfinite(arr).all() and 0 <= arr.min() and arr.max() <= 1:
        out = (arr.astype(np.float64) * 255.0).round()  # floats in [0, 1]
    else:
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0, 0)
        raise DataError(f"{path}: {im.mode!r} image with values in [{lo:g}, {hi:g}]; expected 8- or 16-bit "
                        "integers, or floats in [0, 1]")
    return Image.fromarray(out.astype(np.uint8), mode="L")


def load_image(path: str | Path) -> np.ndarray:
    """An RGB image as ``uint8`` ``(H, W, 3)``, oriented by its EXIF tag; greyscale, palette, 16-bit and
    float images are converted (16-bit by its full range, floats from [0, 1])."""
    im = _open(Path(path))
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        im = _to_uint8_grey(im, Path(path))
    if im.mode not in ("RGB", "RGBA", "L", "P", "PA", "LA", "CMYK", "YCbCr", "1", "RGBX"):
        raise DataError(f"{path}: unsupported image mode {im.mode!r}; expected an RGB or greyscale image")
    return np.array(im.convert("RGB"))


def load_label(path: str | Path) -> np.ndarray:
    """A label map of class indices as ``uint8`` ``(H, W)``."""
    im = _open(Path(path))
    if im.mode in ("RGB", "RGBA"):
        raise DataError(
            f"{path}: label is a {im.mode} colour image; expected a single-channel PNG of class indices "
            "(colour-coded masks must be converted first)")
    arr = np.array(im)
    if arr.ndim != 2:
        raise DataError(f"{path}: label has shape {arr.shape}; expected a single-channel (H, W) map")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{path}: label values span [{arr.min()}, {arr.max()}]; expected 0-255")
        arr = arr.astype(np.uint8)
    return arr


def _process_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _process_umask()


def default_mode(directory: bool = False) -> int:
    """The permissions a new file (or folder) gets under the umask; ``tempfile`` makes them private."""
    return (0o777 if directory else 0o666) & ~_UMASK


def atomic_path(path: str | Path):
    """Context manager giving a temporary sibling path that replaces ``path`` only on success."""
    return _AtomicPath(Path(path))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporaries that ``atomic_path`` left in ``folder`` when a process was killed mid-write.

    Call it only where no other process is writing (e.g. when a run folder is resumed).
    """
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class _AtomicPath:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self.tmp.is_file():
                os.chmod(self.tmp, default_mode())  # readable like any other output, not private
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (for locks and partial outputs of killed runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Prove, before any work is done and without creating anything, that ``path`` can become a folder of
    outputs: it is not a file, and its nearest existing ancestor takes a new file. One clear error otherwise."""
    p = Path(path)
    existing = next((q for q in (p, *p.parents) if q.exists()), Path("."))
    if not existing.is_dir():
        raise DataError(f"{p}: the {what} cannot be made there, {existing} is an existing file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(f"{p}: cannot write the {what} there ({e.strerror or e})") from None
    return p


def partial_dir(out: str | Path) -> Path:
    """A new hidden sibling ``.NAME.partial-PID`` to build the folder ``out`` in (renamed to it when complete).

    Partial folders that killed processes left beside ``out`` are removed first, so nothing a kill left
    is ever mistaken for a result.
    """
    out = Path(out)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and process_alive(int(pid))) or int(pid) == os.getpid():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir(parents=True)
    return tmp


def prepare_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """:func:`check_output_dir`, then create the folder (and its parents)."""
    p = check_output_dir(path, what)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{p}: cannot create the {what} ({e.strerror or e})") from None
    return p


def prepare_output_file(path: str | Path, what: str = "output file") -> Path:
    """Check that ``path`` can be written (its folder exists or can be made, and it is not a folder)."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: the {what} is an existing folder; give a file name")
    prepare_output_dir(p.parent if str(p.parent) else Path("."), f"folder of the {what}")
    return p


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file (or would: compared after resolving links and ``..``)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def is_within(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (after resolving)."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def save_png(array: np.ndarray, path: str | Path, palette: list | tuple | None = None) -> None:
    """Write a uint8 array as PNG atomically; a 2-D array with ``palette`` becomes a palette PNG."""
    im = Image.fromarray(np.ascontiguousarray(array))
    if palette is not None and array.ndim == 2:
        im = im.convert("P")
        flat = [v for c in palette for v in c]
        im.putpalette(flat + [0] * (768 - len(flat)))
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def load_torch_file(path: str | Path, what: str = "checkpoint"):
    """``torch.load`` with ``weights_only=True`` (safe for untrusted files) and one clear error."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes one clear message
        raise CheckpointError(f"{path}: not a readable {what} ({type(e).__name__}: {str(e)[:200]})") from None
