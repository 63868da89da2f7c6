"""Data: IDX reading, dataset discovery, in-memory DataModules and a fast batch loader."""

from dnnkit.data.auxiliary import AuxiliaryDataModule, make_auxiliary
from dnnkit.data.datamodule import MNISTDataModule, load_arrays, split_indices
from dnnkit.data.discovery import DatasetNotFound, find_dataset
from dnnkit.data.feature_cache import CachedDataModule, FeatureLoader
from dnnkit.data.idx import read_idx, write_idx
from dnnkit.data.loader import TensorLoader

__all__ = [
    "AuxiliaryDataModule",
    "CachedDataModule",
    "DatasetNotFound",
    "FeatureLoader",
    "MNISTDataModule",
    "TensorLoader",
    "find_dataset",
    "load_arrays",
    "make_auxiliary",
    "read_idx",
    "split_indices",
    "write_idx",
]
