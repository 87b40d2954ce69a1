"""Packed splits (structseg data pack): same samples as the PNGs, atomic writing, clear errors."""
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from structseg.cli import main
from structseg.data.dataset import SegmentationDataset
from structseg.data.packed import pack_split
from structseg.data.transforms import TrainTransform
from structseg.errors import DataError


def test_packed_split_reads_the_same_samples_as_the_pngs(synth_root, tmp_path, capsys):
    out = tmp_path / "p"
    # a 0.05-MiB shard limit spreads the samples over several shards: offsets and shard switching are exercised
    assert main(["data", "pack", str(synth_root), "--split", "train.txt", "--out", str(out), "--shard-mb", "0.05",
                 "--quiet"]) == 0
    assert f"data.train_split={out.resolve()}" in capsys.readouterr().out
    loose = SegmentationDataset(synth_root, "train.txt")
    packed = SegmentationDataset(synth_root, str(out))
    image, label = loose.load(0)
    per_shard = int(0.05 * 2 ** 20) // (image.nbytes + label.nbytes)  # synth images all have one size
    assert len(packed) == len(loose)
    assert len(list(out.glob("shard-*.bin"))) == -(-len(loose) // per_shard) >= 2
    for i in range(len(loose)):
        (a, b), (c, d) = loose.load(i), packed.load(i)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
        assert packed.pairs[i] == loose.pairs[i]
    # the same augmentation stream gives the same training sample, also after pickling (DataLoader workers)
    tf = TrainTransform((0.5, 0.5, 0.5), (0.2, 0.2, 0.2), 255, (0.8, 1.2), (32, 32), True, 0.1, 0.1, 0.1, 0.02)
    loose.transform, packed.transform = tf, tf
    clone = pickle.loads(pickle.dumps(packed))
    for i in (0, 5):
        x0, y0 = loose[i]
        for ds in (packed, clone):
            x1, y1 = ds[i]
            assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_pack_goes_where_told_and_refusals(synth_copy, tmp_path):
    out = pack_split(synth_copy, "val.txt", tmp_path / "elsewhere" / "val", progress=False)
    assert out == tmp_path / "elsewhere" / "val" and not (synth_copy / "packed").exists()
    assert len(SegmentationDataset(synth_copy, str(out))) == len(SegmentationDataset(synth_copy, "val.txt"))
    with pytest.raises(DataError, match="already exists"):
        pack_split(synth_copy, "val.txt", out, progress=False)
    with pytest.raises(DataError, match="--shard-mb must be a positive number"):
        pack_split(synth_copy, "val.txt", tmp_path / "p0", shard_mb=0, progress=False)


def test_pack_removes_the_partial_folder_a_killed_run_left(synth_copy, tmp_path):
    stale = tmp_path / ".val.partial-999999999"  # no such process
    stale.mkdir()
    (stale / "shard-00000.bin").write_bytes(b"half")
    pack_split(synth_copy, "val.txt", tmp_path / "val", progress=False)
    assert not stale.exists() and (tmp_path / "val" / "index.json").is_file()


def test_failed_pack_leaves_nothing(synth_copy):
    lab = synth_copy / (synth_copy / "train.txt").read_text().split()[-1]  # the split's last label
    arr = np.array(Image.open(lab))
    arr[0, 0] = 99  # out of range: found while packing, after earlier samples were written
    Image.fromarray(arr).save(lab)
    with pytest.raises(DataError, match=r"label values \[99\] out of range"):
        pack_split(synth_copy, "train.txt", synth_copy / "p", progress=False)
    assert not (synth_copy / "p").exists() and not list(synth_copy.glob(".p.partial-*"))


def test_damaged_or_stale_pack_is_a_clear_error(synth_copy):
    out = pack_split(synth_copy, "train.txt", synth_copy / "p", progress=False)
    shard = out / "shard-00000.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(DataError, match="shard-00000.bin: missing or truncated"):
        SegmentationDataset(synth_copy, str(out))
    shard.write_bytes(data)
    info = json.loads((synth_copy / "classes.json").read_text())
    info["classes"][0] = "renamed"
    (synth_copy / "classes.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="packed with other classes"):
        SegmentationDataset(synth_copy, str(out))
    (out / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="index.json: not a structseg packed split"):
        SegmentationDataset(synth_copy, str(out))
