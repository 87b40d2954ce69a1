import numpy as np
import pytest
import torch

from structseg.data.transforms import (EvalTransform, TrainTransform, adjust_colour, crop, hflip, pad_to,
                                       resize)

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)


def coded_pair(h=60, w=80, seed=0):
    """A label of blocks and an image whose colour encodes the label exactly."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, (h // 10, w // 10))
    label = np.kron(coarse, np.ones((10, 10), dtype=np.int64)).astype(np.uint8)
    return PALETTE[label], label


def decode(img: torch.Tensor, mean, std) -> np.ndarray:
    """Undo normalisation and map each pixel to the nearest palette colour index."""
    x = img * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    rgb = (x.permute(1, 2, 0).numpy() * 255)
    d = ((rgb[:, :, None, :] - PALETTE[None, None].astype(np.float32)) ** 2).sum(-1)
    return d.argmin(-1)


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_keeps_image_and_label_aligned(seed):
    image, label = coded_pair(seed=seed)
    tf = TrainTransform(ignore_index=255, scale=(0.5, 2.0), crop_size=(48, 72), brightness=0, contrast=0,
                        saturation=0, hue=0)
    img, lab = tf(image, label, torch.Generator().manual_seed(seed))
    assert img.shape == (3, 48, 72) and lab.shape == (48, 72)
    valid = lab != 255
    got = decode(img, tf.mean, tf.std)
    # bilinear image vs nearest label can differ only on block borders
    agree = (got[valid.numpy()] == lab[valid].numpy()).mean()
    assert agree > 0.93, agree


def test_exact_alignment_without_scaling():
    image, label = coded_pair()
    tf = TrainTransform(ignore_index=255, scale=(1.0, 1.0), crop_size=(40, 50), brightness=0, contrast=0,
                        saturation=0, hue=0)
    for s in range(10):
        img, lab = tf(image, label, torch.Generator().manual_seed(s))
        np.testing.assert_array_equal(decode(img, tf.mean, tf.std), lab.numpy())


def test_padding_uses_ignore_index_for_labels_and_zero_for_image():
    img = torch.ones(3, 5, 6)
    lab = torch.zeros(5, 6, dtype=torch.long)
    pi, pl = pad_to(img, lab, 8, 9, ignore_index=11)
    assert pi.shape == (3, 8, 9) and pl.shape == (8, 9)
    assert (pl[5:] == 11).all() and (pl[:, 6:] == 11).all() and (pl[:5, :6] == 0).all()
    assert (pi[:, 5:] == 0).all() and (pi[:, :5, :6] == 1).all()


def test_crop_and_flip_by_hand():
    img = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    lab = torch.arange(12).reshape(3, 4)
    ci, cl = crop(img, lab, 1, 2, 2, 2)
    assert cl.tolist() == [[6, 7], [10, 11]]
    assert ci[0].tolist() == [[6.0, 7.0], [10.0, 11.0]]
    fi, fl = hflip(img, lab)
    assert fl[0].tolist() == [3, 2, 1, 0] and fi[1, 0].tolist() == [15.0, 14.0, 13.0, 12.0]


def test_resize_label_is_nearest():
    lab = torch.tensor([[0, 1], [2, 3]])
    _, big = resize(torch.zeros(3, 2, 2), lab, (4, 4))
    assert big.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_colour_ops():
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(3, 8, 8, generator=rng) * 0.8 + 0.1
    torch.testing.assert_close(adjust_colour(x), x)
    torch.testing.assert_close(adjust_colour(x, hue=1.0), x, atol=1e-5, rtol=0)
    muted = 0.45 + 0.1 * x  # stays inside the RGB gamut after a hue rotation: no clipping
    rotated = adjust_colour(muted, hue=0.1)
    assert not torch.allclose(rotated, muted, atol=1e-3)
    torch.testing.assert_close(adjust_colour(rotated, hue=-0.1), muted, atol=1e-5, rtol=0)
    luma = torch.tensor([0.299, 0.587, 0.114])[:, None, None]
    torch.testing.assert_close((rotated * luma).sum(0), (muted * luma).sum(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(adjust_colour(x, brightness=0.5), x * 0.5)
    grey = adjust_colour(x, saturation=0.0)
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    flat = adjust_colour(x, contrast=0.0)
    assert torch.allclose(flat, flat.mean().expand_as(flat), atol=1e-6)


def test_augmentation_is_deterministic_by_generator():
    image, label = coded_pair()
    tf = TrainTransform(ignore_index=255, crop_size=(32, 32))
    a = tf(image, label, torch.Generator().manual_seed(5))
    b = tf(image, label, torch.Generator().manual_seed(5))
    c = tf(image, label, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_eval_transform_normalises_only():
    image, label = coded_pair()
    img, lab = EvalTransform()(image, label)
    assert img.shape == (3, 60, 80)
    np.testing.assert_array_equal(lab.numpy(), label)
    np.testing.assert_array_equal(decode(img, EvalTransform().mean, EvalTransform().std), label)


def test_training_transform_is_bit_identical_for_any_thread_count():
    # a DataLoader worker runs one thread, the main process several: the same seed must give the same sample
    import numpy as np
    from structseg.data.transforms import TrainTransform
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (61, 83), dtype=np.uint8)
    tf = TrainTransform(scale=(0.6, 1.7), crop_size=(48, 56), brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append([tf(image, label, torch.Generator().manual_seed(s)) for s in range(6)])
    finally:
        torch.set_num_threads(before)
    for (x1, y1), (x2, y2) in zip(*outs):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
