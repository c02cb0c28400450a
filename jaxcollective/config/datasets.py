"""The datasets a run can read: input width, classes, image shape and normalisation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    input_dim: int
    num_classes: int
    image_shape: tuple[int, int, int]  # H, W, C
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS = {
    "mnist": DatasetInfo(784, 10, (28, 28, 1), (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo(784, 10, (28, 28, 1), (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(
        3072, 10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    # scikit-learn's 8x8 digits (pixel values 0..16, stored scaled to 0..255).
    "digits": DatasetInfo(64, 10, (8, 8, 1), (0.3053,), (0.3760,)),
}
# `synthetic` takes the shape and normalisation of `synthetic_like`.
DATASET_NAMES = tuple(DATASETS) + ("synthetic",)
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10")
