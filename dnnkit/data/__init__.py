"""Data: one DataModule contract (:mod:`dnnkit.data.base`) for IDX files, ``.npz`` arrays and
torchvision sets; a fast batch loader; batch augmentation."""

from dnnkit.data.arrays import ArraysDataModule
from dnnkit.data.augment import build_augment
from dnnkit.data.auxiliary import AuxiliaryDataModule, make_auxiliary
from dnnkit.data.base import TensorDataModule, split_indices
from dnnkit.data.datamodule import MNISTDataModule, load_arrays
from dnnkit.data.discovery import DatasetNotFound, find_dataset
from dnnkit.data.feature_cache import CachedDataModule, FeatureLoader
from dnnkit.data.folder import ImageFolderDataModule
from dnnkit.data.idx import read_idx, write_idx
from dnnkit.data.loader import TensorLoader
from dnnkit.data.pairs import PairLoader, PairsDataModule, draw_pairs
from dnnkit.data.torchvision_sets import TorchvisionDataModule

__all__ = [
    "ArraysDataModule",
    "AuxiliaryDataModule",
    "CachedDataModule",
    "DatasetNotFound",
    "FeatureLoader",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "PairLoader",
    "PairsDataModule",
    "TensorDataModule",
    "TensorLoader",
    "TorchvisionDataModule",
    "build_augment",
    "draw_pairs",
    "find_dataset",
    "load_arrays",
    "make_auxiliary",
    "read_idx",
    "split_indices",
    "write_idx",
]
