"""In-memory image datasets (digits, synthetic, CIFAR-10/100, SVHN) and a deterministic batch loader."""
from .cifar import download_cifar
from .svhn import download_svhn
from .core import ImageDataset, split_indices
from .load import DATASETS, load_dataset
from .loader import BatchLoader

__all__ = ["DATASETS", "ImageDataset", "load_dataset", "split_indices", "BatchLoader", "download_cifar", "download_svhn"]
