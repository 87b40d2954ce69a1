"""Class weights for the loss computed from training labels."""
from __future__ import annotations

import numpy as np

from .dataset import SegmentationDataset


def class_pixel_stats(dataset: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per class: the pixel count and the total pixel count of the images that contain it."""
    c = dataset.classes.num_classes
    counts = np.zeros(c, dtype=np.int64)
    image_pixels = np.zeros(c, dtype=np.int64)
    for i in range(len(dataset)):
        _, label = dataset.load(i)
        hist = np.bincount(label.ravel(), minlength=256)[:c]
        counts += hist
        image_pixels[hist > 0] += label.size
    return counts, image_pixels


def median_frequency_weights(dataset: SegmentationDataset) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015, as used by SegNet).

    ``freq(c)`` = pixels of class c / total pixels of the images where c is present;
    ``weight(c) = median(freq) / freq(c)``. Classes never seen get weight 0.
    """
    counts, image_pixels = class_pixel_stats(dataset)
    present = image_pixels > 0
    freq = np.zeros(len(counts))
    freq[present] = counts[present] / image_pixels[present]
    weights = np.zeros(len(counts))
    weights[present] = np.median(freq[present]) / freq[present]
    return weights


def enet_weights(dataset: SegmentationDataset, c: float = 1.02) -> np.ndarray:
    """ENet's weighting (Paszke et al. 2016): ``w = 1 / ln(c + p)``, ``p`` the class's share of all
    labelled (non-ignored) pixels of the split; bounded above by ``1 / ln(c)`` (about 50)."""
    counts, _ = class_pixel_stats(dataset)
    p = counts / max(counts.sum(), 1)
    return 1.0 / np.log(c + p)
