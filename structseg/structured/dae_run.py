"""``structseg dae train | validate | test | compare``: the seed-000 protocol on any segmenter and dataset.

1. ``train``: a conditional DAE learns to map the frozen segmenter's corrupted probabilities (plus its
   features ``h``) to the ground truth; RMSprop with Lasagne's constants, lr annealed per epoch, early
   stopping on the validation loss (CE + lmb * squared error), ``best.pt`` / ``last.pt`` written atomically,
   re-running resumes.
2. ``validate``: for every step size, iterative inference for up to N iterations on a validation split,
   mIoU after every iteration (an image that stopped early keeps its last ``y``); the best (step,
   iterations) pair is written to ``chosen.yaml`` with a plot of mIoU per iteration for each step.
3. ``test``: applies the chosen pair to a split and writes ``metrics.json`` as ``structseg eval`` does.
4. ``compare``: base network / base + one DAE pass / base + iterative inference / base + dense CRF on one split.

The config keeps the seed's vocabulary: ``dae_dict``, ``train_dict`` and ``data_augmentation``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from ..config import dataclass_from_dict, read_yaml
from ..data.dataset import SegmentationDataset
from ..data.io import (atomic_path, check_output_dir, load_torch_file, prepare_output_dir,
                       remove_stale_temporaries)
from ..data.transforms import EvalTransform, TrainTransform
from ..engine.checkpoint import (PRETRAINED_DIR, checkpoint_classes, load_checkpoint, model_from_checkpoint,
                                 pretrained_models, resolve_checkpoint)
from ..engine.metrics import ConfusionMatrix, class_map
from ..engine.report import format_table, metrics_record
from ..engine.runtime import amp_dtype, autocast, pick_device, set_threads
from ..errors import CheckpointError, ConfigError
from ..viz.plots import class_bars, confusion_heatmap, line_chart
from .dae import ConditionalDAE, DAEConfig, corrupt, dae_loss, iterative_inference
from .features import SegmenterWithFeatures

FORMAT = "structseg-dae-v1"
STEPS = (0.01, 0.02, 0.05, 0.08, 0.1, 0.5, 1.0)  # the released validation grid


@dataclass
class TrainDict:
    """The seed's ``train_dict``. ``weight_decay`` is listed in the released configs but never added to the
    loss there, so it applies only with ``use_weight_decay: true`` (default false, as the code ran)."""

    learning_rate: float = 0.001
    lr_anneal: float = 0.99
    weight_decay: float = 0.0001
    use_weight_decay: bool = False
    num_epochs: int = 500
    max_patience: int = 100
    optimizer: str = "rmsprop"
    batch_size: list[int] = field(default_factory=lambda: [10, 10, 10])  # train, validation, test
    training_loss: list[str] = field(default_factory=lambda: ["crossentropy", "squared_error"])
    lmb: float = 1.0
    full_im_ft: bool = False  # fine-tune on full images instead of crops
    amp: str = "auto"  # not in the seed: autocast for the segmenter and the DAE (auto, bf16, fp16, off)


@dataclass
class DataAugmentation:
    """The seed's ``data_augmentation``: random crops (padded with void), horizontal flips."""

    crop_size: list[int] | None = field(default_factory=lambda: [224, 224])
    horizontal_flip: float = 0.5
    fill_mode: str = "constant"


@dataclass
class DAEData:
    root: str = ""
    train_split: str = "train.txt"
    val_split: str = "val.txt"


@dataclass
class DAERunConfig:
    data: DAEData = field(default_factory=DAEData)
    dae_dict: DAEConfig = field(default_factory=DAEConfig)
    train_dict: TrainDict = field(default_factory=TrainDict)
    data_augmentation: DataAugmentation = field(default_factory=DataAugmentation)
    segmenter_layers: dict[str, str] = field(default_factory=dict)  # e.g. {pool4: backbone.features.23}
    seed: int = 0
    threads: int = 0

    def validate(self) -> None:
        t, a = self.train_dict, self.data_augmentation
        checks = [
            (t.optimizer in ("rmsprop", "adam", "sgd"), f"train_dict.optimizer {t.optimizer!r}: expected rmsprop, adam or sgd"),
            (bool(t.training_loss) and set(t.training_loss) <= {"crossentropy", "squared_error"}
             and "crossentropy" in t.training_loss,
             f"train_dict.training_loss {t.training_loss}: expected [crossentropy] or [crossentropy, squared_error]"),
            (len(t.batch_size) == 3 and all(b >= 1 for b in t.batch_size),
             f"train_dict.batch_size {t.batch_size}: expected [train, validation, test], each >= 1"),
            (t.num_epochs >= 1 and t.max_patience >= 1 and t.learning_rate > 0 and 0 < t.lr_anneal <= 1,
             "train_dict: num_epochs and max_patience >= 1, learning_rate > 0, lr_anneal in (0, 1]"),
            (a.horizontal_flip in (0, 0.5), f"data_augmentation.horizontal_flip {a.horizontal_flip}: 0 or 0.5"),
            (a.fill_mode == "constant", f"data_augmentation.fill_mode {a.fill_mode!r}: only 'constant' (void) is supported"),
            (bool(self.data.root), "data.root: the dataset folder is required"),
            (t.amp in ("auto", "bf16", "fp16", "off"), f"train_dict.amp {t.amp!r}: expected auto, bf16, fp16 or off"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            self.dae_dict.validate()
        except ValueError as e:
            raise ConfigError(f"dae_dict: {e}") from None


def load_dae_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DAERunConfig:
    data = read_yaml(path, "DAE config")
    try:
        cfg = dataclass_from_dict(DAERunConfig, data, overrides)
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


# ---------------------------------------------------------------------------------------------- loading

def load_segmenter(path: str | Path, names: list[str], layers: dict[str, str], temperature: float,
                   device: torch.device) -> tuple[dict, SegmenterWithFeatures]:
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).to(device)
    return ckpt, SegmenterWithFeatures(model, names, layers, temperature)


def _segmenter_ref(segmenter: str | Path) -> str:
    """How a DAE checkpoint names its segmenter: a shipped model by name (valid on any install, also when given
    as the path of a shipped file, e.g. recorded by another install), else an absolute path."""
    shipped = pretrained_models()
    by_file = {p.name: name for name, p in shipped.items()}
    path = Path(str(segmenter))
    if str(segmenter) in shipped:
        return str(segmenter)
    if path.parent.name == "pretrained" and path.name in by_file:
        return by_file[path.name]
    return str(resolve_checkpoint(segmenter).resolve())


def _dataset(root: str | Path, split: str, ckpt: dict, transform=None) -> SegmentationDataset:
    norm = ckpt["normalization"]
    ds = SegmentationDataset(root, split, transform or EvalTransform(tuple(norm["mean"]), tuple(norm["std"])))
    names = checkpoint_classes(ckpt).names
    if names != ds.classes.names:
        raise CheckpointError(f"segmenter trained on classes {list(names)}, but {root} has {list(ds.classes.names)}")
    return ds


def shipped_daes() -> dict[str, Path]:
    """DAE checkpoints shipped with the package, by name (``camvid-unet-dae`` -> ``pretrained/dae/camvid_unet_dae.pt``)."""
    return {p.stem.replace("_", "-"): p for p in sorted((PRETRAINED_DIR / "dae").glob("*.pt"))}


def read_dae_checkpoint(path: str | Path) -> dict:
    """A DAE checkpoint file, or the name of a shipped one, read safely and checked."""
    shipped = shipped_daes()
    if str(path) not in shipped and str(path) in pretrained_models() and not Path(path).exists():
        raise CheckpointError(f"{path}: that is a shipped segmentation model, not a DAE; shipped DAEs: "
                              f"{', '.join(shipped) or 'none'} (or give a DAE checkpoint file)")
    path = shipped.get(str(path), path)
    ck = load_torch_file(path, "DAE checkpoint")
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a structseg DAE checkpoint (expected format {FORMAT})")
    return ck


def export_dae(src: str | Path, dst: str | Path, half: bool = True, chosen: tuple[float, int] | None = None) -> dict:
    """A deployable DAE: weights (fp16 when ``half``), config, segmenter reference and, when given, the chosen
    (step, iterations), which ``dae test`` and ``dae compare`` then use by default; no optimiser state."""
    ck = read_dae_checkpoint(src)
    payload = {k: v for k, v in ck.items() if k not in ("state_dict", "optimizer", "train_state")}
    payload["segmenter"] = _segmenter_ref(ck["segmenter"])
    payload["state_dict"] = {k: (v.half() if half and v.is_floating_point() else v).clone()
                             for k, v in ck["state_dict"].items()}
    if chosen is not None:
        payload["chosen"] = {"step": float(chosen[0]), "iterations": int(chosen[1])}
    _save(Path(dst), payload)
    return payload


def load_dae(path: str | Path, segmenter: str | Path | None, device: torch.device):
    """A trained DAE checkpoint, its segmenter (the one it was trained on unless ``segmenter`` is given)."""
    ck = read_dae_checkpoint(path)
    cfg = dataclass_from_dict(DAERunConfig, ck["config"])
    seg_ckpt, seg = load_segmenter(segmenter or ck["segmenter"], cfg.dae_dict.concat_h, ck["taps"],
                                   cfg.dae_dict.temperature, device)
    if seg.channels != ck["h_channels"]:
        raise CheckpointError(f"{path}: trained on segmenter features {ck['h_channels']}, got {seg.channels}")
    dae = ConditionalDAE(ck["num_classes"], seg.channels, cfg.dae_dict).to(device)
    dae.load_state_dict(ck["state_dict"])
    return cfg, seg_ckpt, seg, dae.eval()


def batches(ds: SegmentationDataset, indices, size: int):
    """Stacked ``(x, label, indices)``; consecutive images of equal size share a batch."""
    group: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    for i in indices:
        x, lab = ds[i]
        if group and (len(group) == size or group[0][0].shape != x.shape):
            yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group]), [g[2] for g in group]
            group = []
        group.append((x, lab, i))
    if group:
        yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group]), [g[2] for g in group]


# --------------------------------------------------------------------------------------------- training

def _optimizer(params, t: TrainDict) -> torch.optim.Optimizer:
    wd = t.weight_decay if t.use_weight_decay else 0.0
    if t.optimizer == "rmsprop":  # Lasagne's rho and epsilon, not PyTorch's defaults
        return torch.optim.RMSprop(params, lr=t.learning_rate, alpha=0.9, eps=1e-6, weight_decay=wd)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.learning_rate, weight_decay=wd)
    return torch.optim.SGD(params, lr=t.learning_rate, momentum=0.9, weight_decay=wd)


def _onehot(label: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(label.clamp(max=classes - 1), classes).permute(0, 3, 1, 2).float() * (label < classes)[:, None]


def _dae_inputs(seg, x, label, cfg: DAERunConfig, classes: int, g: torch.Generator | None):
    probs, h = seg(x)
    y = _onehot(label, classes) if cfg.dae_dict.from_gt else probs
    return (corrupt(y, cfg.dae_dict.noise, g) if g is not None else y), h


def train_dae(cfg: DAERunConfig, segmenter: str | Path, out: str | Path, progress: bool = True,
              stop_after_epochs: int | None = None) -> dict:
    """Train; returns the last epoch's record. Resumes from ``out/last.pt`` when it exists."""
    set_threads(cfg.threads)
    device = pick_device()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # a checkpoint half-written when the last run was killed
    cfg_dict = dataclasses.asdict(cfg)
    seg_ckpt, seg = load_segmenter(segmenter, cfg.dae_dict.concat_h, cfg.segmenter_layers,
                                   cfg.dae_dict.temperature, device)
    norm = seg_ckpt["normalization"]
    a, t = cfg.data_augmentation, cfg.train_dict
    crop = None if (t.full_im_ft or a.crop_size is None) else tuple(a.crop_size)
    probe = SegmentationDataset(cfg.data.root, cfg.data.train_split, cache=False)
    train_tf = TrainTransform(tuple(norm["mean"]), tuple(norm["std"]), probe.classes.ignore_index, (1.0, 1.0),
                              crop, a.horizontal_flip > 0, 0.0, 0.0, 0.0, 0.0)
    train_ds = _dataset(cfg.data.root, cfg.data.train_split, seg_ckpt, train_tf)
    val_ds = _dataset(cfg.data.root, cfg.data.val_split, seg_ckpt)
    classes, ignore = train_ds.classes.num_classes, train_ds.classes.ignore_index
    torch.manual_seed(cfg.seed)
    dae = ConditionalDAE(classes, seg.channels, cfg.dae_dict).to(device)
    opt = _optimizer(dae.parameters(), t)
    dtype = amp_dtype(t.amp, device)
    lmb = t.lmb if "squared_error" in t.training_loss else 0.0
    state = {"epoch": 0, "best": math.inf, "patience": 0}
    last = out / "last.pt"
    if last.exists():
        ck = load_torch_file(last, "DAE checkpoint")
        same = lambda c: {k: v for k, v in (c or {}).items() if k != "threads"}  # noqa: E731 - threads may change
        if same(ck.get("config")) != same(cfg_dict):
            raise ConfigError(f"{last}: belongs to a run with another config; use a new --out folder")
        dae.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["train_state"]
    payload = {"format": FORMAT, "config": cfg_dict, "segmenter": _segmenter_ref(segmenter),
               "taps": seg.taps, "h_channels": seg.channels, "num_classes": classes,
               "classes": train_ds.classes.to_dict()}
    record: dict[str, Any] = {}
    stop_at = t.num_epochs if stop_after_epochs is None else min(t.num_epochs, state["epoch"] + stop_after_epochs)
    while state["epoch"] < stop_at and state["patience"] < t.max_patience:
        epoch = state["epoch"]
        for group in opt.param_groups:
            group["lr"] = t.learning_rate * t.lr_anneal ** epoch
        train_ds.set_epoch(epoch)
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(train_ds), generator=g).tolist()
        dae.train()
        losses, t0 = [], time.time()
        bar = tqdm(list(batches(train_ds, order, t.batch_size[0])), desc=f"dae epoch {epoch + 1}", unit="batch",
                   disable=not progress, leave=False)
        for x, label, _ in bar:
            x, label = x.to(device), label.to(device)
            with autocast(device, dtype):
                y, h = _dae_inputs(seg, x, label, cfg, classes, g)
                logits = dae(y, h)
            loss = dae_loss(logits.float(), label, ignore, lmb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        val_loss, cm = _validation(dae, seg, val_ds, cfg, classes, ignore, lmb, device, dtype)
        m = cm.compute()
        state["epoch"] = epoch + 1
        improved = val_loss < state["best"]
        state["best"], state["patience"] = (val_loss, 0) if improved else (state["best"], state["patience"] + 1)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                  "val": {"miou": m["miou"], "mean_acc": m["mean_acc"], "pixel_acc": m["pixel_acc"]},
                  "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0}
        if improved:
            _save(out / "best.pt", {**payload, "state_dict": dae.state_dict(), "epoch": epoch + 1, "val_loss": val_loss})
        _save(last, {**payload, "state_dict": dae.state_dict(), "optimizer": opt.state_dict(), "train_state": state})
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if progress:
            print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, val loss {val_loss:.4f}, "
                  f"val mIoU (one DAE pass) {m['miou']:.4f}{' *' if improved else ''}", flush=True)
    return record


@torch.no_grad()
def _validation(dae, seg, ds, cfg, classes, ignore, lmb, device, dtype) -> tuple[float, ConfusionMatrix]:
    dae.eval()
    cm = ConfusionMatrix(classes, ignore)
    total, n = 0.0, 0
    for x, label, _ in batches(ds, range(len(ds)), cfg.train_dict.batch_size[1]):
        x, label = x.to(device), label.to(device)
        with autocast(device, dtype):
            y, h = _dae_inputs(seg, x, label, cfg, classes, None)
            logits = dae(y, h).float()
        total += dae_loss(logits, label, ignore, lmb).item() * x.shape[0]
        n += x.shape[0]
        cm.update(class_map(logits).cpu(), label.cpu())
    return total / max(n, 1), cm


def _save(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


# ------------------------------------------------------------------------------------ inference protocols

def choose(table: dict[float, list[float]]) -> tuple[float, int]:
    """The (step, iterations >= 1) with the highest mIoU; ties go to fewer iterations, then the smaller step."""
    best = max(((miou, -it, -step) for step, row in table.items() for it, miou in enumerate(row) if it >= 1),
               default=None)
    if best is None:
        raise ValueError("no iteration to choose from")
    return -best[2], -best[1]


def validate_dae(dae_path: str | Path, root: str | Path, split: str, out: str | Path,
                 steps: tuple[float, ...] = STEPS, max_iterations: int = 50, segmenter: str | None = None,
                 progress: bool = True) -> dict:
    out = prepare_output_dir(out, "validation output folder")  # before any scoring
    device = pick_device()
    cfg, seg_ckpt, seg, dae = load_dae(dae_path, segmenter, device)
    dtype = amp_dtype(cfg.train_dict.amp, device)
    ds = _dataset(root, split, seg_ckpt)
    classes, ignore = ds.classes.num_classes, ds.classes.ignore_index
    # each finished step is saved at once, so an interrupted validation resumes where it stopped
    progress_file = out / "validate_steps.json"
    run_key = {"dae": str(dae_path), "data": str(root), "split": split, "max_iterations": max_iterations,
               "segmenter": None if segmenter is None else str(segmenter)}
    table: dict[float, list[float]] = {}
    try:
        saved = json.loads(progress_file.read_text()) if progress_file.exists() else {}
        if saved.get("run") == run_key:
            table = {float(k): v for k, v in saved["table"].items() if float(k) in steps}
    except (ValueError, KeyError, AttributeError, TypeError):  # damaged by hand: score every step again
        table = {}
    if table and progress:
        print(f"resuming: steps {', '.join(map(str, table))} already scored ({progress_file})", flush=True)
    for step in steps:
        if step in table:
            continue
        cms = [ConfusionMatrix(classes, ignore) for _ in range(max_iterations + 1)]
        for x, label, _ in tqdm(list(batches(ds, range(len(ds)), cfg.train_dict.batch_size[1])),
                                desc=f"step {step}", unit="batch", disable=not progress, leave=False):
            with autocast(device, dtype):
                y0, h = seg(x.to(device))
                cms[0].update(class_map(y0).cpu(), label)
                iterative_inference(dae, y0, h, step, max_iterations,
                                    on_iteration=lambda i, y, lab=label: cms[i].update(class_map(y).cpu(), lab))
        table[step] = [cm.compute()["miou"] for cm in cms]
        with atomic_path(progress_file) as tmp:
            tmp.write_text(json.dumps({"run": run_key, "table": {str(k): v for k, v in table.items()}}))
        if progress:
            it = int(np.argmax(table[step][1:])) + 1
            print(f"step {step}: base {table[step][0]:.4f}, best {table[step][it]:.4f} after {it} iterations", flush=True)
    table = {step: table[step] for step in steps}
    step, iterations = choose(table)
    result = {"dae": str(dae_path), "data": str(root), "split": split, "base_miou": table[steps[0]][0],
              "table": {str(k): v for k, v in table.items()}, "step": step, "iterations": iterations,
              "miou": table[step][iterations]}
    with atomic_path(out / "validate.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    with atomic_path(out / "chosen.yaml") as tmp:
        tmp.write_text(yaml.safe_dump({"step": step, "iterations": iterations}))
    its = list(range(max_iterations + 1))
    line_chart({f"step {s}": (its, table[s]) for s in steps}, out / "miou_per_iteration.png",
               f"{split}: mIoU per iteration (iteration 0 = base network)")
    return result


def read_chosen(path: str | Path) -> tuple[float, int]:
    data = read_yaml(path, "chosen step/iterations file")
    try:
        step, iterations = float(data["step"]), int(data["iterations"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: expected 'step: <number>' and 'iterations: <integer>'") from None
    if step <= 0 or iterations < 1:
        raise ConfigError(f"{path}: step must be > 0 and iterations >= 1")
    return step, iterations


def _score(dae_path, root, split, segmenter, methods: dict[str, Callable], progress: bool, batch_index: int = 2):
    """Confusion matrices of several refinements of the base probabilities, in one pass over the split."""
    device = pick_device()
    cfg, seg_ckpt, seg, dae = load_dae(dae_path, segmenter, device)
    dtype = amp_dtype(cfg.train_dict.amp, device)
    ds = _dataset(root, split, seg_ckpt)
    cms = {k: ConfusionMatrix(ds.classes.num_classes, ds.classes.ignore_index) for k in methods}
    t0 = {k: 0.0 for k in methods}
    for x, label, idx in tqdm(list(batches(ds, range(len(ds)), cfg.train_dict.batch_size[batch_index])),
                              desc="scoring", unit="batch", disable=not progress, leave=False):
        with autocast(device, dtype):
            y0, h = seg(x.to(device))
        for name, fn in methods.items():
            start = time.perf_counter()
            with autocast(device, dtype):
                y = fn(dae, y0, h, ds, idx)
            t0[name] += time.perf_counter() - start
            cms[name].update(class_map(y).cpu(), label)
    return ds, cms, t0


def apply_dae(dae_path: str | Path, root: str | Path, split: str, step: float, iterations: int,
             out: str | Path | None = None, segmenter: str | None = None, progress: bool = True) -> dict:
    if out is not None:
        check_output_dir(out, "test output folder")  # before scoring the whole split, not after
    ds, cms, _ = _score(dae_path, root, split, segmenter,
                        {"it": lambda dae, y0, h, ds, idx: iterative_inference(dae, y0, h, step, iterations)}, progress)
    names = list(ds.classes.names)
    record = {"dae": str(dae_path), "data": str(root), "split": split, "num_images": len(ds), "step": step,
              "iterations": iterations, **metrics_record(cms["it"], names)}
    print(format_table(record))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "metrics.json") as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        confusion_heatmap(np.array(record["confusion"]), names, out / "confusion.png")
        class_bars(names, [v or 0.0 for v in record["per_class_iou"].values()], out / "per_class_iou.png")
    return record


def compare_dae(dae_path: str | Path, root: str | Path, split: str, step: float, iterations: int,
            crf=None, out: str | Path | None = None, segmenter: str | None = None, progress: bool = True) -> list[dict]:
    """One table: base, + one DAE pass (step 1, one iteration), + iterative inference, + dense CRF."""
    if out is not None:
        check_output_dir(out, "comparison output folder")  # before scoring, not after
    methods: dict[str, Callable] = {
        "base network": lambda dae, y0, h, ds, idx: y0,
        "+ DAE, one pass": lambda dae, y0, h, ds, idx: iterative_inference(dae, y0, h, 1.0, 1),
        f"+ iterative inference (step {step}, {iterations} it.)":
            lambda dae, y0, h, ds, idx: iterative_inference(dae, y0, h, step, iterations),
    }
    if crf is not None:
        from .crf_postprocess import crf_refiner
        refine = crf_refiner(crf)

        def dense_crf(dae, y0, h, ds, idx):
            with torch.autocast(y0.device.type, enabled=False):  # the CRF runs in float32, as in eval
                return torch.cat([refine(torch.log(y0[k:k + 1].clamp(min=1e-8)), ds.load(i)[0])
                                  for k, i in enumerate(idx)])
        methods[f"+ dense CRF ({crf.iterations} it.)"] = dense_crf
    ds, cms, seconds = _score(dae_path, root, split, segmenter, methods, progress)
    rows = []
    for name, cm in cms.items():
        m = cm.compute()
        rows.append({"method": name, "miou": m["miou"], "mean_acc": m["mean_acc"], "pixel_acc": m["pixel_acc"],
                     "seconds_per_image": seconds[name] / len(ds)})
    lines = [f"{split} ({len(ds)} images)", "| method | mIoU | mean class acc | pixel acc | s / image |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {100 * r['miou']:.2f} | {100 * r['mean_acc']:.2f} | {100 * r['pixel_acc']:.2f} | "
              f"{r['seconds_per_image']:.3f} |" for r in rows]
    print("\n".join(lines))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "compare.json") as tmp:
            tmp.write_text(json.dumps(rows, indent=1))
        with atomic_path(out / "compare.md") as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    return rows
