"""The training loop: one readable function, resumable, single process or ``torchrun``.

``train(cfg, out_dir)`` builds data, model and optimiser from the config, resumes from
``out_dir/last.pt`` when it exists, and per epoch: trains on augmented crops, validates every
``val_every`` epochs, writes ``last.pt`` (and ``best.pt`` on a new best val mIoU) atomically and
appends a line to ``metrics.jsonl``. Augmentation, shuffling and dropout are seeded from
``(seed, epoch)``, so a resumed run continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .._io import prepare_output_dir, remove_stale_temporaries
from ..config import Config, save_config
from ..data.class_weights import enet_weights, median_frequency_weights
from ..data.dataset import SegmentationDataset
from ..data.layout import read_classes
from ..data.tags import TaggedDataset
from ..data.transforms import EvalTransform, TrainTransform
from ..errors import CheckpointError, ConfigError, StructsegError
from ..models import encoder_normalization, load_backbone_weights
from .checkpoint import build_model, load_checkpoint, save_checkpoint
from .distributed import (
    all_reduce_mean,
    barrier,
    init_distributed,
    is_main,
    rank,
    world_size,
)
from .evaluate import evaluate
from .losses import build_loss
from .optim import build_optimizer, lr_factor
from .run_folder import RunLock, check_resume
from .run_log import RunLog, read_run_log
from .runtime import amp_dtype, autocast, pick_device, set_threads
from .pseudo_labels import retrain_labels
from .weak import build_objective


def build_datasets(cfg: Config, progress: bool = True, pseudo_root: Path | None = None
                   ) -> tuple[SegmentationDataset | TaggedDataset, SegmentationDataset | None]:
    """Training set with augmentation (images and tags alone with ``weak.tags``; the pseudo labels in
    ``pseudo_root`` with ``weak.method: retrain``) and the (optional) validation set, decoded into RAM."""
    d, a = cfg.data, cfg.augment
    train_tf = TrainTransform(mean=tuple(d.mean), std=tuple(d.std), scale=tuple(a.scale),
                              crop_size=tuple(a.crop_size) if a.crop_size else None, hflip=a.hflip,
                              brightness=a.brightness, contrast=a.contrast, saturation=a.saturation, hue=a.hue)
    on_tags = cfg.weak.tags and pseudo_root is None
    if pseudo_root is not None:  # weak.method retrain: labels written by a teacher from the images and tags
        train_ds = SegmentationDataset(pseudo_root, "train.txt", train_tf, cache=d.cache, seed=cfg.train.seed,
                                       channels=d.channels)
    elif on_tags:  # weak supervision: images and tags only, no label map is read
        train_ds = TaggedDataset(d.root, cfg.weak.tags, train_tf, seed=cfg.train.seed, channels=d.channels)
    else:
        train_ds = SegmentationDataset(d.root, d.train_split, train_tf, cache=d.cache, seed=cfg.train.seed,
                                       channels=d.channels)
    train_tf.ignore_index = train_ds.classes.ignore_index
    if len(a.scale) != 2 or not 0 < a.scale[0] <= a.scale[1]:
        raise ConfigError(f"config key 'augment.scale': expected [min, max] with 0 < min <= max, got {a.scale}")
    if cfg.train.batch_size > 1 and not a.crop_size:
        raise ConfigError("config key 'augment.crop_size' is null but train.batch_size > 1: "
                          "images of different sizes cannot be batched; set a crop size or batch_size 1")
    val_ds = None
    if d.val_split:
        val_ds = SegmentationDataset(d.root, d.val_split, EvalTransform(tuple(d.mean), tuple(d.std)), cache=d.cache,
                                     channels=d.channels)
        if val_ds.classes != train_ds.classes:
            raise ConfigError(f"{d.val_split} and {d.train_split} use different classes.json")
    progress = progress and is_main()
    train_ds.preload(progress)
    if not on_tags and d.cache and all((train_ds.load(i)[1] == train_ds.classes.ignore_index).all()
                                             for i in range(len(train_ds))):
        raise ConfigError(f"{d.root}/{d.train_split}: every label pixel is the ignore index "
                          f"{train_ds.classes.ignore_index}; there is nothing to train on")
    if val_ds is not None:
        val_ds.preload(progress)
    return train_ds, val_ds


def resolve_normalization(cfg: Config) -> None:
    """Fill ``data.mean``/``data.std`` left null with what the backbone's ImageNet weights expect (repeated over
    the bands when ``data.channels`` is not 3), and make ``data.channels`` the model's ``in_channels``."""
    c = cfg.data.channels
    given = cfg.model.args.get("in_channels")
    if given is not None and given != c:
        raise ConfigError(f"config key 'model.args.in_channels' is {given} but 'data.channels' is {c}; "
                          "set data.channels alone")
    if c != 3:
        crf = cfg.model.crf.get("kind", "mean_field") if cfg.model.crf is not None else None
        if crf == "mean_field" or cfg.weak.tags:
            raise ConfigError(f"data.channels is {c}: {'model.crf mean_field' if crf else 'weak.tags'} needs the "
                              "dense CRF's colour kernel, which reads RGB images (3 channels)")
        cfg.model.args["in_channels"] = c
    backbone = cfg.model.args.get("backbone")
    mean, std = encoder_normalization(backbone) if isinstance(backbone, str) else encoder_normalization("")
    cfg.data.mean = [mean[i % 3] for i in range(c)] if cfg.data.mean is None else cfg.data.mean
    cfg.data.std = [std[i % 3] for i in range(c)] if cfg.data.std is None else cfg.data.std
    for key in ("mean", "std"):
        if len(getattr(cfg.data, key)) != c:
            raise ConfigError(f"config key 'data.{key}': {len(getattr(cfg.data, key))} values for "
                              f"{c} channel(s) (data.channels)")


def resolve_class_weights(cfg: Config, train_ds: SegmentationDataset) -> torch.Tensor | None:
    cw = cfg.train.class_weights
    c = train_ds.classes.num_classes
    if cw is None or cw == "none":
        return None
    if cw == "median_frequency":
        return torch.tensor(median_frequency_weights(train_ds), dtype=torch.float32)
    if cw == "enet":
        return torch.tensor(enet_weights(train_ds), dtype=torch.float32)
    if isinstance(cw, list):
        if len(cw) != c:
            raise ConfigError(f"config key 'train.class_weights': {len(cw)} weights given for {c} classes")
        return torch.tensor(cw, dtype=torch.float32)
    raise ConfigError(f"config key 'train.class_weights': expected null, 'median_frequency', 'enet' or a list, "
                      f"got {cw!r}")


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """This process's shuffled batches of epoch ``epoch`` (drop_last; shards split across ranks)."""
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_rank = n // world_size()
    mine = order[rank() * per_rank:(rank() + 1) * per_rank]
    nb = len(mine) // batch_size
    if nb == 0:
        raise ConfigError(f"train.batch_size {batch_size} is larger than the training split ({per_rank} images "
                          "per process)")
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(nb)]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _tensorboard(out_dir: Path, enabled: bool):
    if not enabled or not is_main():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(str(out_dir / "tb"))


def train(cfg: Config, out_dir: str | Path, progress: bool = True, stop_after_epochs: int | None = None,
          allow_changes: bool = False) -> dict:
    """Train (or resume) the run in ``out_dir``; returns a summary with the best val metrics.

    ``stop_after_epochs`` ends this call after that many epochs (the run can be resumed later). The folder
    is locked while this runs; resuming with settings other than the checkpoint's is refused unless
    ``allow_changes``.
    """
    out_dir = Path(out_dir)
    if not is_main():
        return _train(cfg, out_dir, progress, stop_after_epochs, allow_changes)
    created = not out_dir.exists()
    prepare_output_dir(out_dir, "run folder")
    try:
        with RunLock(out_dir):
            return _train(cfg, out_dir, progress, stop_after_epochs, allow_changes)
    except BaseException:
        if created and not (out_dir / "last.pt").exists():  # failed before its first epoch: leave nothing
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _init_weights(cfg: Config, model_spec: dict) -> dict | None:
    """The state dict of ``model.init_from`` (checked to be the configured network), or None."""
    if not cfg.model.init_from:
        return None
    if cfg.model.backbone_weights:
        raise ConfigError("model.init_from and model.backbone_weights: give one of the two")
    init = load_checkpoint(cfg.model.init_from)
    if init.get("model") != model_spec:
        raise CheckpointError(f"model.init_from {cfg.model.init_from}: holds model {init.get('model')}, but the "
                              f"config asks for {model_spec}; it must be the same network and class count")
    return init["state_dict"]


def _train(cfg: Config, out_dir: Path, progress: bool, stop_after_epochs: int | None, allow_changes: bool) -> dict:
    distributed = init_distributed()
    set_threads(cfg.train.threads)
    device = pick_device()
    dtype = amp_dtype(cfg.train.amp, device)
    show = progress and is_main()  # progress bars
    report = is_main()  # one summary line per epoch

    if not cfg.data.root:
        raise ConfigError("config key 'data.root' is empty; set it to a dataset folder (e.g. --set data.root=DIR)")
    classes = read_classes(cfg.data.root)
    c = classes.num_classes
    torch.manual_seed(cfg.train.seed)
    resolve_normalization(cfg)
    args = dict(cfg.model.args)
    pretrained = args.pop("pretrained", False) or cfg.model.pretrained  # in args as create_model takes it, or not
    model_spec = {"name": cfg.model.name, "args": args, "num_classes": c, "crf": cfg.model.crf}
    # fails fast on a bad config; the ImageNet weights are loaded only for a new run not started from model.init_from
    ckpt_last = out_dir / "last.pt"
    model = build_model(model_spec, tuple(cfg.data.mean), tuple(cfg.data.std),
                        pretrained=pretrained and not cfg.model.init_from and not ckpt_last.exists())
    init = None if ckpt_last.exists() else _init_weights(cfg, model_spec)  # before the datasets: fails fast
    retrain = bool(cfg.weak.tags) and cfg.weak.method == "retrain"
    pseudo_root = retrain_labels(cfg.weak, cfg.data.root, out_dir, device, show) if retrain else None
    train_ds, val_ds = build_datasets(cfg, progress, pseudo_root)

    state = None
    if ckpt_last.exists():
        state = load_checkpoint(ckpt_last)
        if state["model"] != model_spec:
            raise CheckpointError(f"{ckpt_last}: run folder holds model {state['model']}, but the config asks for "
                                  f"{model_spec}; use another --out folder")
        if "train_state" not in state:
            raise CheckpointError(f"{ckpt_last}: not a resumable checkpoint (no optimiser state; an export?); "
                                  "use another --out folder")
        changes = check_resume(state.get("config"), cfg, out_dir, allow_changes)
        if changes and is_main():
            shutil.copyfile(out_dir / "config.yaml", out_dir / f"config.before_epoch_{state['train_state']['epoch']}.yaml")
            print("continuing with changed settings: " + "; ".join(changes))
        model.load_state_dict(state["state_dict"])
    elif init is not None:
        model.load_state_dict(init)
    elif cfg.model.backbone_weights:
        load_backbone_weights(getattr(model, "net", model), cfg.model.backbone_weights)
    if is_main():
        remove_stale_temporaries(out_dir)  # a checkpoint half-written when the last run was killed
        save_config(cfg, out_dir / "config.yaml")

    model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if distributed and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                    else None) if distributed else model

    if cfg.weak.tags and cfg.train.class_weights is not None:
        raise ConfigError("config key 'train.class_weights': not available with weak.tags (it needs label maps)")
    weights = None if cfg.weak.tags else resolve_class_weights(cfg, train_ds)
    if weights is not None and report:
        print("class weights:", ", ".join(f"{n}={w:.3f}" for n, w in zip(classes.names, weights.tolist())))
    weights = weights.to(device) if weights is not None else None
    criterion = build_loss(cfg.train.loss, weights, classes.ignore_index)

    objective = (build_objective(c, cfg.weak, tuple(cfg.data.mean), tuple(cfg.data.std), classes.names).to(device)
                 if cfg.weak.tags and not retrain else None)
    optimizer = build_optimizer(model if objective is None else torch.nn.ModuleList([model, objective]),
                                cfg.optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16 and device.type == "cuda"))
    bs = cfg.train.batch_size
    steps_per_epoch = len(epoch_batches(len(train_ds), bs, cfg.train.seed, 0))
    total_steps = steps_per_epoch * cfg.train.epochs

    start_epoch, step, best, best_epoch, bad_epochs = 0, 0, -1.0, 0, 0
    if state is not None:
        ts = state["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        if objective is not None:
            objective.load_state_dict(ts["objective"])
        if ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        start_epoch, step = ts["epoch"], ts["step"]
        best, best_epoch, bad_epochs = ts["best_miou"], ts["best_epoch"], ts["bad_epochs"]
        if report:
            print(f"resuming {out_dir} from epoch {start_epoch} (best val mIoU {best:.4f})")
    log = RunLog(out_dir / "metrics.jsonl", start_epoch) if is_main() else None
    tb = _tensorboard(out_dir, cfg.train.tensorboard)

    payload_base = {"model": model_spec, "classes": classes.to_dict(),
                    "normalization": {"mean": list(cfg.data.mean), "std": list(cfg.data.std)},
                    "config": cfg.to_dict()}
    run_start = time.time()
    epochs_done_here = 0
    stopped_early = cfg.train.patience > 0 and bad_epochs >= cfg.train.patience  # a resumed run that had stopped
    for epoch in range(start_epoch, cfg.train.epochs):
        if stopped_early or (stop_after_epochs is not None and epochs_done_here >= stop_after_epochs):
            break
        t0 = time.time()
        torch.manual_seed(cfg.train.seed * 100_003 + epoch)
        train_ds.set_epoch(epoch)
        batches = epoch_batches(len(train_ds), bs, cfg.train.seed, epoch)
        loader = torch.utils.data.DataLoader(train_ds, batch_sampler=batches, num_workers=cfg.data.workers,
                                             worker_init_fn=_worker_init if cfg.data.workers else None)
        net.train()
        loss_sum, seen, skipped = 0.0, 0, 0
        bar = tqdm(total=len(batches) * bs, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="img",
                   disable=not show, leave=False, dynamic_ncols=True)
        for images, labels in loader:
            f = lr_factor(cfg.schedule, step, steps_per_epoch, total_steps, cfg.optimizer.lr)
            for g in optimizer.param_groups:
                g["lr"] = cfg.optimizer.lr * f * g["lr_scale"]
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            # every pixel of these crops is ignored (weak supervision: tags, never empty)
            unlabelled = objective is None and not (labels != classes.ignore_index).any()
            if unlabelled and not distributed:  # (under DDP every rank must step together: a zero loss instead)
                skipped += 1
                step += 1
                bar.update(images.shape[0])
                continue
            if cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                logits, aux = net(images, return_aux=True)
            # (a CRF-as-RNN model returns log-marginals; log-softmax and softmax leave them as they are)
            if objective is not None:  # weak supervision: labels are the images' tags
                loss_of = lambda out: objective(out, images, labels)  # noqa: E731
            else:
                loss_of = lambda out: criterion(out, labels)  # noqa: E731
            loss = loss_of(logits) + sum(cfg.train.aux_weight * loss_of(a) for a in aux)
            if unlabelled:
                skipped += 1
                loss = logits.float().sum() * 0.0
            if not torch.isfinite(loss):
                raise StructsegError(f"training diverged at epoch {epoch + 1}, step {step}: loss is {loss.item()}; "
                                     "lower optimizer.lr or add schedule.warmup_epochs")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += loss.item() * images.shape[0]
            seen += images.shape[0]
            bar.update(images.shape[0])
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        bar.close()
        train_time = time.time() - t0
        record = {"epoch": epoch + 1, "step": step, "train_loss": all_reduce_mean(loss_sum / max(seen, 1)),
                  "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen * world_size() / train_time,
                  "epoch_time_s": train_time, "started": t0, "batches_all_ignored": skipped}
        metrics = None
        is_last = epoch + 1 == cfg.train.epochs
        if val_ds is not None and ((epoch + 1) % cfg.train.val_every == 0 or is_last):
            cm = evaluate(model, val_ds, device, dtype, cfg.train.channels_last, progress=show, desc="val")
            metrics = cm.compute()
            record["val"] = {k: metrics[k] for k in ("miou", "mean_acc", "pixel_acc")}
            if metrics["miou"] > best:
                best, best_epoch, bad_epochs = metrics["miou"], epoch + 1, 0
                if is_main():
                    save_checkpoint(out_dir / "best.pt", {**payload_base, "state_dict": model.state_dict(),
                                                          "epoch": epoch + 1, "metrics": metrics})
            else:
                bad_epochs = epoch + 1 - best_epoch
        if is_main():
            log.append(record)
            if tb is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        tb.add_scalar(f"train/{k}", v, epoch + 1)
                for k, v in record.get("val", {}).items():
                    tb.add_scalar(f"val/{k}", v, epoch + 1)
                tb.flush()
            train_state = {"epoch": epoch + 1, "step": step, "best_miou": best, "best_epoch": best_epoch,
                           "bad_epochs": bad_epochs, "optimizer": optimizer.state_dict(),
                           "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                           "objective": objective.state_dict() if objective is not None else None}
            save_checkpoint(ckpt_last, {**payload_base, "state_dict": model.state_dict(), "epoch": epoch + 1,
                                        "metrics": metrics, "train_state": train_state})
        barrier()
        epochs_done_here += 1
        if report:
            elapsed = time.time() - run_start
            eta = elapsed / epochs_done_here * (cfg.train.epochs - epoch - 1)
            val_txt = f" val mIoU {metrics['miou']:.4f} (best {best:.4f} @ {best_epoch})" if metrics else ""
            tqdm.write(f"epoch {epoch + 1}/{cfg.train.epochs} loss {record['train_loss']:.4f} "
                       f"{record['images_per_s']:.1f} img/s{val_txt} | ETA {_fmt_time(eta)}")
            sys.stdout.flush()
        if cfg.train.patience > 0 and bad_epochs >= cfg.train.patience:
            stopped_early = True
            if report:
                print(f"early stopping: val mIoU has not improved for {bad_epochs} epochs")
    if tb is not None:
        tb.close()
    if is_main():
        from ..viz.plots import training_curves
        training_curves(read_run_log(out_dir / "metrics.jsonl"), out_dir / "curves.png")
    if distributed:
        torch.distributed.destroy_process_group()
    return {"out_dir": str(out_dir), "best_miou": best, "best_epoch": best_epoch,
            "best_checkpoint": str(out_dir / "best.pt") if best >= 0 else None,
            "last_checkpoint": str(ckpt_last), "stopped_early": stopped_early,
            "wall_time_s": time.time() - run_start}


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
