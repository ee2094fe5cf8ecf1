"""Datasets (all local, no download) and torch-only augmentation. See :mod:`visattn.data.datasets`."""

from visattn.data.datasets import (
    DataBundle,
    ImageDataset,
    load_cifar10,
    load_data,
    load_digits_dataset,
    load_image_folder,
    stratified_split,
)
from visattn.data.transforms import EpochBatches, epoch_augment_params, normalize, random_crop_flip

__all__ = [
    "DataBundle",
    "ImageDataset",
    "EpochBatches",
    "load_data",
    "load_digits_dataset",
    "load_cifar10",
    "load_image_folder",
    "stratified_split",
    "epoch_augment_params",
    "normalize",
    "random_crop_flip",
]
