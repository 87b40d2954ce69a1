"""Weakly supervised training from tags (seed 001): it runs, resumes, and never reads a training label map."""
from __future__ import annotations

import math

import pytest
import torch

from structseg.config import config_from_dict
from structseg.data.layout import read_classes, read_split
from structseg.data.tags import tags_from_labels, write_tags
from structseg.engine.checkpoint import load_checkpoint
from structseg.engine.trainer import train
from structseg.errors import ConfigError, DataError

from .test_engine import tiny_config


def weak_config(root, tags, **train):
    cfg = tiny_config(root, **train).to_dict()
    cfg["weak"] = {"tags": str(tags), "kl_weight": 0.1, "min_share": 0.05,
                   "prior": {"appearance_xy": 20.0, "smoothness_xy": 2.0}}
    return config_from_dict(cfg)


@pytest.fixture
def tagged_copy(synth_copy, tmp_path):
    tags = write_tags(tmp_path / "train.tags.txt", tags_from_labels(synth_copy, "train.txt", progress=False),
                      synth_copy, read_classes(synth_copy))
    return synth_copy, tags


def test_weak_run_trains_resumes_and_keeps_its_likelihood_rates(tagged_copy, tmp_path):
    root, tags = tagged_copy
    run = tmp_path / "run"
    train(weak_config(root, tags, epochs=2), run, progress=False, stop_after_epochs=1)
    first = load_checkpoint(run / "last.pt")["train_state"]
    assert first["epoch"] == 1 and first["objective"]["rho"].shape == (5,)
    summary = train(weak_config(root, tags, epochs=2), run, progress=False)
    state = load_checkpoint(run / "last.pt")["train_state"]
    assert state["epoch"] == 2 and math.isfinite(summary["best_miou"])
    assert not torch.equal(state["objective"]["rho"], first["objective"]["rho"])  # the rates are learned


def test_garbage_in_the_training_label_maps_changes_nothing(tagged_copy, tmp_path):
    root, tags = tagged_copy
    train(weak_config(root, tags, epochs=1), tmp_path / "a", progress=False)
    clean = load_checkpoint(tmp_path / "a" / "last.pt")["state_dict"]
    val_labels = {lab for _, lab in read_split(root, "val.txt")}
    for _, lab in read_split(root, "train.txt"):
        if lab not in val_labels:
            lab.write_bytes(b"garbage, not a PNG")
    train(weak_config(root, tags, epochs=1), tmp_path / "b", progress=False)
    dirty = load_checkpoint(tmp_path / "b" / "last.pt")["state_dict"]
    assert clean.keys() == dirty.keys() and all(torch.equal(clean[k], dirty[k]) for k in clean)


@pytest.mark.parametrize("colour", [{}, {"weight": 2.0, "bins": 8}])
def test_the_expand_constrain_baseline_trains_from_tags(tagged_copy, tmp_path, colour):
    root, tags = tagged_copy
    cfg = weak_config(root, tags, epochs=1)
    cfg.weak.method = "expand_constrain"
    cfg.weak.prior = {"iterations": 2, "appearance_xy": 20.0}
    cfg.weak.colour = colour
    summary = train(cfg, tmp_path / "sec", progress=False)
    assert math.isfinite(summary["best_miou"])
    assert load_checkpoint(tmp_path / "sec" / "last.pt")["train_state"]["objective"] == {}


def test_weak_config_errors(tagged_copy, tmp_path):
    root, tags = tagged_copy
    cfg = weak_config(root, tags)
    cfg.train.class_weights = "median_frequency"
    with pytest.raises(ConfigError, match="class_weights.*weak.tags"):
        train(cfg, tmp_path / "c", progress=False)
    with pytest.raises(DataError, match="tags file not found"):
        train(weak_config(root, tmp_path / "missing.txt"), tmp_path / "d", progress=False)
    with pytest.raises(ConfigError, match="weak.leak"):
        config_from_dict({"data": {"root": str(root)}, "weak": {"leak": 1.0}})
    bad = weak_config(root, tags)
    bad.weak.prior = {"apperance_xy": 3.0}
    with pytest.raises(ConfigError, match="weak.prior"):
        train(bad, tmp_path / "e", progress=False)
    for colour, match in (({"wieght": 2.0}, "weak.colour.*wieght"), ({"weight": 2.0, "bins": 100}, "weak.colour.*bins")):
        bad = weak_config(root, tags)
        bad.weak.method, bad.weak.colour = "expand_constrain", colour
        with pytest.raises(ConfigError, match=match):
            train(bad, tmp_path / "g", progress=False)
    for decays, match in (({"no_such_class": 0.999}, "gwrp_decay_classes.no_such_class.*no class of that name"),
                          ({read_classes(root).names[0]: 1.5}, "gwrp_decay_classes.*in \\(0, 1\\]")):
        bad = weak_config(root, tags)
        bad.weak.method, bad.weak.gwrp_decay_classes = "expand_constrain", decays
        with pytest.raises(ConfigError, match=match):
            train(bad, tmp_path / "f", progress=False)


@pytest.fixture
def sec_checkpoint(tagged_copy, tmp_path):
    """A one-epoch expand / constrain network: what ``structseg data pseudo-labels`` reads."""
    root, tags = tagged_copy
    cfg = weak_config(root, tags, epochs=1)
    cfg.weak.method = "expand_constrain"
    cfg.weak.prior = {"iterations": 2}
    train(cfg, tmp_path / "sec", progress=False)
    return root, tags, tmp_path / "sec" / "best.pt"


def test_pseudo_labels_use_only_each_images_tags_and_form_a_dataset(sec_checkpoint, tmp_path):
    import numpy as np

    from structseg.cli import main
    from structseg.data.dataset import SegmentationDataset
    from structseg.data.tags import read_tags
    root, tags, checkpoint = sec_checkpoint
    out = tmp_path / "pseudo"
    assert main(["data", "pseudo-labels", str(checkpoint), str(root), "--tags", str(tags),
                 "--out", str(out), "--crf-set", "iterations=2", "--quiet"]) == 0
    ds = SegmentationDataset(out, "train.txt")
    entries = read_tags(root, tags)
    assert len(ds) == len(entries)
    for i, e in enumerate(entries):
        image, label = ds.load(i)
        assert set(np.unique(label).tolist()) <= set(e.tags)  # never a class the image is not tagged with
        assert image.shape[:2] == label.shape
    assert main(["data", "pseudo-labels", str(checkpoint), str(root), "--tags", str(tags),
                 "--out", str(out)]) == 2  # an existing folder is never overwritten


def test_pseudo_labels_confidence_threshold_and_validation_split(sec_checkpoint, tmp_path):
    """--min-confidence ignores exactly the pixels the plain run labels with a marginal below it; --val
    points at the original split's files."""
    import numpy as np

    from structseg.cli import main
    from structseg.data.dataset import SegmentationDataset
    root, tags, checkpoint = sec_checkpoint
    common = [str(checkpoint), str(root), "--tags", str(tags), "--crf-set", "iterations=2",
              "--quiet"]
    assert main(["data", "pseudo-labels", *common, "--out", str(tmp_path / "all")]) == 0
    assert main(["data", "pseudo-labels", *common, "--out", str(tmp_path / "sure"), "--min-confidence", "0.999",
                 "--val", "val.txt"]) == 0
    ignore = read_classes(root).ignore_index
    plain, sure = SegmentationDataset(tmp_path / "all", "train.txt"), SegmentationDataset(tmp_path / "sure", "train.txt")
    dropped = 0
    for i in range(len(plain)):
        a, b = plain.load(i)[1], sure.load(i)[1]
        kept = b != ignore
        assert np.array_equal(a[kept], b[kept])  # the threshold only removes labels, never changes one
        dropped += int((~kept).sum())
    assert dropped > 0  # a one-epoch network is not 99.9 % sure everywhere
    resolved = lambda pairs: [(i.resolve(), lab.resolve()) for i, lab in pairs]  # noqa: E731
    assert resolved(read_split(tmp_path / "sure", "val.txt")) == resolved(read_split(root, "val.txt"))
    assert main(["data", "pseudo-labels", *common, "--out", str(tmp_path / "bad"), "--min-confidence", "1.5"]) == 2
    assert main(["data", "pseudo-labels", *common, "--out", str(tmp_path / "bad"), "--colour-weight", "2",
                 "--colour-bins", "100"]) == 2
    assert not (tmp_path / "bad").exists()


def test_pseudo_labels_with_colour_models_are_the_refined_marginals(sec_checkpoint, tmp_path, monkeypatch):
    """--colour-weight writes the argmax of tag_restricted_marginals with the colour model, image by image;
    --tags names a file from the working directory (it is not under ROOT)."""
    import numpy as np

    from structseg._io import load_image
    from structseg.cli import main
    from structseg.data.dataset import SegmentationDataset
    from structseg.data.tags import read_tags
    from structseg.data.transforms import network_input
    from structseg.engine.checkpoint import load_pretrained
    from structseg.engine.inference import forward_logits
    from structseg.engine.runtime import amp_dtype
    from structseg.structured.colour_model import ColourModel
    from structseg.structured.dense_crf import CRFParams
    from structseg.structured.seed_expand_constrain import tag_restricted_marginals
    root, tags, checkpoint = sec_checkpoint
    out = tmp_path / "colour"
    assert not (root / tags.name).exists()
    monkeypatch.chdir(tags.parent)
    assert main(["data", "pseudo-labels", str(checkpoint), str(root), "--tags", tags.name,
                 "--out", str(out), "--crf-set", "iterations=2", "--colour-weight", "3", "--colour-bins", "8",
                 "--quiet"]) == 0
    model = load_pretrained(checkpoint, torch.device("cpu"))
    ds = SegmentationDataset(out, "train.txt")
    for i, e in enumerate(read_tags(root, tags)):
        image = load_image(e.image)
        cpu = torch.device("cpu")
        logits = forward_logits(model, network_input(image, *model.normalization)[None], cpu, amp_dtype("auto", cpu))
        hot = torch.zeros(1, logits.shape[1])
        hot[0, list(e.tags)] = 1.0
        rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        q = tag_restricted_marginals(logits, rgb, hot, CRFParams(iterations=2), ColourModel(3.0, 3, 8))
        assert np.array_equal(ds.load(i)[1], q[0].argmax(0).numpy()), e.image


def retrain_config(root, tags, teacher, epochs=1):
    cfg = weak_config(root, tags, epochs=epochs)
    cfg.weak.method, cfg.weak.teacher = "retrain", str(teacher)
    cfg.weak.prior, cfg.weak.colour = {"iterations": 2}, {"weight": 2.0, "bins": 8}
    return cfg


def test_retrain_trains_on_the_teachers_pseudo_labels_and_resumes(sec_checkpoint, tmp_path):
    """weak.method retrain writes what `data pseudo-labels` writes with the same settings, once per run."""
    import numpy as np

    from structseg._io import load_label
    from structseg.cli import main
    root, tags, checkpoint = sec_checkpoint
    run = tmp_path / "retrain"
    train(retrain_config(root, tags, checkpoint, epochs=2), run, progress=False, stop_after_epochs=1)
    assert main(["data", "pseudo-labels", str(checkpoint), str(root), "--tags", str(tags), "--out",
                 str(tmp_path / "cli"), "--crf-set", "iterations=2", "--colour-weight", "2", "--colour-bins", "8",
                 "--quiet"]) == 0
    ours, cli = read_split(run / "pseudo_labels", "train.txt"), read_split(tmp_path / "cli", "train.txt")
    assert [i.resolve() for i, _ in ours] == [i.resolve() for i, _ in cli] and len(ours) > 0
    assert all(np.array_equal(load_label(a), load_label(b)) for (_, a), (_, b) in zip(ours, cli))
    written = {lab: lab.stat().st_mtime_ns for _, lab in ours}
    summary = train(retrain_config(root, tags, checkpoint, epochs=2), run, progress=False)
    state = load_checkpoint(run / "last.pt")["train_state"]
    assert state["epoch"] == 2 and math.isfinite(summary["best_miou"]) and state["objective"] is None
    assert {lab: lab.stat().st_mtime_ns for _, lab in read_split(run / "pseudo_labels", "train.txt")} == written


def test_retrain_never_reads_a_training_label_map(sec_checkpoint, tmp_path):
    root, tags, checkpoint = sec_checkpoint
    train(retrain_config(root, tags, checkpoint), tmp_path / "a", progress=False)
    clean = load_checkpoint(tmp_path / "a" / "last.pt")["state_dict"]
    val_labels = {lab for _, lab in read_split(root, "val.txt")}
    for _, lab in read_split(root, "train.txt"):
        if lab not in val_labels:
            lab.write_bytes(b"garbage, not a PNG")
    train(retrain_config(root, tags, checkpoint), tmp_path / "b", progress=False)
    dirty = load_checkpoint(tmp_path / "b" / "last.pt")["state_dict"]
    assert clean.keys() == dirty.keys() and all(torch.equal(clean[k], dirty[k]) for k in clean)


def test_retrain_config_errors(sec_checkpoint, tmp_path):
    root, tags, checkpoint = sec_checkpoint
    cfg = retrain_config(root, tags, checkpoint)
    cfg.weak.teacher = None
    with pytest.raises(ConfigError, match="weak.teacher.*empty"):
        train(cfg, tmp_path / "a", progress=False)
    cfg = retrain_config(root, tags, checkpoint)
    cfg.weak.method = "expand_constrain"
    with pytest.raises(ConfigError, match="weak.teacher.*retrain only"):
        train(cfg, tmp_path / "b", progress=False)
    cfg = retrain_config(root, tags, tmp_path / "no_such.pt")
    with pytest.raises(ConfigError, match="weak.teacher.*no_such.pt: checkpoint not found"):
        train(cfg, tmp_path / "c", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_pseudo_labels_from_an_ensemble_of_teachers_average_their_softmax(sec_checkpoint, tmp_path):
    import numpy as np

    from structseg._io import load_image
    from structseg.cli import main
    from structseg.data.dataset import SegmentationDataset
    from structseg.data.tags import read_tags
    from structseg.data.transforms import network_input
    from structseg.engine.checkpoint import load_pretrained
    from structseg.engine.inference import forward_logits
    from structseg.engine.runtime import amp_dtype
    from structseg.structured.dense_crf import CRFParams
    from structseg.structured.seed_expand_constrain import tag_restricted_marginals
    root, tags, first = sec_checkpoint
    cfg = weak_config(root, tags, epochs=1, seed=7)
    cfg.weak.method, cfg.weak.prior = "expand_constrain", {"iterations": 2}
    train(cfg, tmp_path / "sec7", progress=False)
    second = tmp_path / "sec7" / "best.pt"
    out = tmp_path / "ens"
    assert main(["data", "pseudo-labels", str(first), str(second), str(root), "--tags", str(tags), "--out", str(out),
                 "--crf-set", "iterations=2", "--quiet"]) == 0
    cpu = torch.device("cpu")
    models = [load_pretrained(c, cpu) for c in (first, second)]
    ds, changed = SegmentationDataset(out, "train.txt"), 0
    for i, e in enumerate(read_tags(root, tags)):
        image = load_image(e.image)
        probs = [torch.softmax(forward_logits(m, network_input(image, *m.normalization)[None], cpu,
                                              amp_dtype("auto", cpu)).float(), 1) for m in models]
        hot = torch.zeros(1, probs[0].shape[1])
        hot[0, list(e.tags)] = 1.0
        rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        label = lambda p: tag_restricted_marginals(torch.log(p), rgb, hot, CRFParams(iterations=2))[0].argmax(0)  # noqa: E731
        ensemble = label((probs[0] + probs[1]) / 2).numpy()
        assert np.array_equal(ds.load(i)[1], ensemble), e.image
        changed += int((ensemble != label(probs[0]).numpy()).sum())
    assert changed > 0  # the second teacher moved some labels: the result is not the first teacher's alone


def test_an_ensemble_of_teachers_with_other_classes_is_refused(sec_checkpoint, tmp_path, capsys):
    from structseg.cli import main
    from structseg.engine.checkpoint import export_checkpoint
    root, tags, first = sec_checkpoint
    payload = load_checkpoint(first)
    renamed = {**payload["classes"], "classes": [f"other{i}" for i in range(len(payload["classes"]["classes"]))]}
    other = tmp_path / "other.pt"
    export_checkpoint(first, other, half=False, changes={"classes": renamed})
    assert main(["data", "pseudo-labels", str(first), str(other), str(root), "--tags", str(tags),
                 "--out", str(tmp_path / "ens"), "--quiet"]) == 2
    assert "other.pt: classes" in capsys.readouterr().err and not (tmp_path / "ens").exists()
