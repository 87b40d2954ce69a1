"""Reading and writing images and label maps, with one clear error per bad file."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CheckpointError, DataError, ImageTooLargeError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".npy")
# what a multi-band image may hold: 8- or 16-bit integers (scaled by their full range) or floats (taken as they are)
BAND_DTYPES = (np.uint8, np.uint16, np.float32)


def _open(path: Path) -> Image.Image:
    """Decode a file as a photo viewer shows it: EXIF orientation applied."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected an image file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return _decode(path, str(path))


def _decode(source, what: str, max_pixels: int | None = None) -> Image.Image:
    """Decode ``source`` (a path or a binary file object), EXIF orientation applied; with ``max_pixels``, a header
    that declares more pixels is refused before any pixel is decoded (a decompression bomb)."""
    try:
        im = Image.open(source)
        if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
            raise ImageTooLargeError(f"{what}: {im.size[0]}x{im.size[1]} image ({im.size[0] * im.size[1]} pixels); "
                                     f"at most {max_pixels} pixels are accepted")
        im.load()
        im = ImageOps.exif_transpose(im)  # a portrait phone photo stored sideways is turned upright
    except UnidentifiedImageError:
        raise DataError(f"{what}: not an image file (cannot identify its format)") from None
    except Image.DecompressionBombError as e:
        limit = f"; at most {max_pixels} pixels are accepted" if max_pixels is not None else ""
        raise ImageTooLargeError(f"{what}: refused unread as a decompression bomb{limit} ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{what}: corrupt, truncated or unreadable image ({e})") from None
    return im


def decode_image_bytes(data: bytes, what: str = "upload", max_pixels: int | None = None) -> np.ndarray:
    """An encoded image (PNG, JPEG, ...) held in memory -> RGB ``uint8 (H, W, 3)``, converted as
    :func:`load_image` converts files; nothing touches the filesystem. ``max_pixels``: see :func:`_decode`."""
    import io
    if not data:
        raise DataError(f"{what}: empty file")
    return _rgb(_decode(io.BytesIO(data), what, max_pixels), what)


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


def load_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """An image as ``(H, W, channels)``.

    ``channels == 3``: RGB ``uint8``, oriented by its EXIF tag; greyscale, palette, 16-bit and float images are
    converted (16-bit by its full range, floats from [0, 1]); a ``.npy`` file must hold ``(H, W, 3)`` ``uint8``.
    Any other count: the bands as stored (``uint8``, ``uint16`` or ``float32``, not rescaled), from a ``.npy``
    array ``(H, W)`` / ``(H, W, C)``, a TIFF (any band count with the ``tifffile`` package, else what Pillow
    reads) or a single-band / RGBA image file; the count must equal ``channels``.
    """
    path = Path(path)
    if channels != 3:
        return load_bands(path, channels)
    if path.suffix.lower() == ".npy":
        arr = _read_npy(path)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise DataError(f"{path}: array of shape {arr.shape} and dtype {arr.dtype}; an RGB image as .npy must be "
                            "(H, W, 3) uint8 (for other band counts set data.channels)")
        return arr
    return _rgb(_open(path), path)


def _rgb(im: Image.Image, what) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        im = _to_uint8_grey(im, what)
    if im.mode not in ("RGB", "RGBA", "L", "P", "PA", "LA", "CMYK", "YCbCr", "1", "RGBX"):
        raise DataError(f"{what}: unsupported image mode {im.mode!r}; expected an RGB or greyscale image")
    return np.array(im.convert("RGB"))


def load_bands(path: str | Path, channels: int) -> np.ndarray:
    """A multi-band (or single-band) image as ``(H, W, channels)`` in its stored type (see :func:`load_image`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = _read_npy(path)
    elif suffix in (".tif", ".tiff"):
        arr = _read_tiff(path, channels)
    else:
        im = _open(path)
        arr = np.asarray(im.convert("L") if im.mode in ("1", "P") else im)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or min(arr.shape) == 0:
        raise DataError(f"{path}: array of shape {arr.shape}; expected an image (H, W) or (H, W, C)")
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.int32 and arr.min() >= 0 and arr.max() <= 65535:  # Pillow's 16-bit 'I' mode
        arr = arr.astype(np.uint16)
    if arr.dtype not in BAND_DTYPES:
        raise DataError(f"{path}: bands of type {arr.dtype}; expected uint8, uint16 or float32")
    if arr.dtype == np.float32 and not np.isfinite(arr).all():
        raise DataError(f"{path}: holds NaN or infinite values")
    if arr.shape[2] != channels:
        raise DataError(f"{path}: {arr.shape[2]} band(s) of {arr.shape[1]}x{arr.shape[0]}; the model takes "
                        f"{channels} (data.channels / the model's in_channels)")
    return np.ascontiguousarray(arr)


def _read_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        arr = np.load(path, allow_pickle=False)  # never unpickles
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected one array, found {type(arr).__name__}")
    return arr


def _read_tiff(path: Path, channels: int) -> np.ndarray:
    """A TIFF's bands as ``(H, W, C)`` (a planar ``(C, H, W)`` file is transposed), by ``tifffile`` when it is
    installed (any band count and type), else by Pillow (single-band, RGB(A))."""
    try:
        import tifffile
    except ImportError:
        tifffile = None
    if tifffile is None:
        im = _open(path)
        return np.asarray(im)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        arr = tifffile.imread(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes one clear message
        raise DataError(f"{path}: corrupt or unreadable TIFF ({type(e).__name__}: {str(e)[:200]})") from None
    if arr.size == 0:
        raise DataError(f"{path}: corrupt or unreadable TIFF (no image data in it)")
    if arr.ndim == 3 and arr.shape[0] == channels and arr.shape[2] != channels:
        arr = np.moveaxis(arr, 0, -1)  # planar configuration: bands first
    return arr


def display_rgb(image: np.ndarray) -> np.ndarray:
    """An image of any band count as ``uint8 (H, W, 3)`` for pictures: RGB as it is; one band as grey; otherwise
    the first three bands. 16-bit bands are scaled by their full range, float bands by their min and max."""
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype == np.uint8 and image.shape[2] == 3:
        return image
    bands = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)
    if bands.dtype == np.uint8:
        return np.ascontiguousarray(bands)
    if bands.dtype == np.uint16:
        return (bands.astype(np.float32) / 257.0).round().astype(np.uint8)
    lo, hi = float(bands.min()), float(bands.max())
    return ((bands - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)).round().clip(0, 255).astype(np.uint8)


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
