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
