"""Dataset converters into the unified layout (``structseg convert KIND SRC DST``).

Each converter reads a dataset in its original layout and returns its classes and a list of
:class:`Sample`; :func:`write_dataset` writes them (atomically, with checks and a summary).
SRC is only ever read.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from .ade20k import ade20k_samples
from .camvid import original_samples, segnet_samples
from .cityscapes import cityscapes_samples
from .folder import folder_samples
from .msrc import msrc_samples
from .voc import voc_samples, voc_sbd_samples
from .writer import Sample, Summary, write_dataset

KINDS = ("voc", "voc-sbd", "cityscapes", "ade20k", "camvid", "msrc", "folder")


def convert(kind: str, src: str | Path, dst: str | Path, progress: bool = True, messages: list[str] | None = None,
            **options) -> Summary:
    """Convert the dataset at ``src`` (of ``kind``) into the unified layout at ``dst``.

    Options: ``sbd`` (voc-sbd: the SBD folder); ``layout`` (camvid: ``segnet`` or ``original``, detected when
    omitted) and ``scale``; ``splits`` (msrc: folder of Shotton's split files); ``classes``, ``palette``,
    ``ignore_index``, ``val_fraction``, ``unknown_colour`` (folder).
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: source folder not found")
    if Path(dst).resolve() == src.resolve() or src.resolve() in Path(dst).resolve().parents:
        raise DataError(f"{dst}: must be outside the source folder (SRC is never modified)")
    messages = messages if messages is not None else []
    if kind == "voc":
        classes, samples = voc_samples(src)
    elif kind == "voc-sbd":
        if not options.get("sbd"):
            raise DataError("voc-sbd needs --sbd FOLDER (the Berkeley SBD benchmark_RELEASE)")
        classes, samples = voc_sbd_samples(src, Path(options["sbd"]))
    elif kind == "cityscapes":
        classes, samples = cityscapes_samples(src)
    elif kind == "ade20k":
        classes, samples = ade20k_samples(src)
    elif kind == "camvid":
        layout = options.get("layout") or ("original" if (src / "701_StillsRaw_full").is_dir() else "segnet")
        if layout == "original":
            classes, samples = original_samples(src, float(options.get("scale") or 1.0))
        elif layout == "segnet":
            classes, samples = segnet_samples(src)
        else:
            raise DataError(f"camvid layout {layout!r}: expected 'segnet' or 'original'")
    elif kind == "msrc":
        splits = options.get("splits")
        classes, samples = msrc_samples(src, Path(splits) if splits else None)
        if {s.split for s in samples} == {"all"}:
            messages.append("no Train.txt/Validation.txt/Test.txt found: every image is in all.txt "
                            "(pass --splits DIR for Shotton's split)")
    elif kind == "folder":
        classes, samples = folder_samples(
            src, options.get("classes"), Path(options["palette"]) if options.get("palette") else None,
            int(options.get("ignore_index", 255)), float(options.get("val_fraction") or 0.0),
            options.get("unknown_colour") or "error", messages)
    else:
        raise DataError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
    return write_dataset(samples, classes, dst, total=len(samples), progress=progress)


__all__ = ["KINDS", "Sample", "Summary", "convert", "write_dataset"]
