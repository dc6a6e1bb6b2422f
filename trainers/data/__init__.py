"""Data: CoOp's datasets in their on-disk layouts, the demo dataset, transforms, DataManager.

Dassl's public names (`from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase`
becomes `from trainers.data import ...`). Importing this package registers every dataset.
"""
from . import datasets  # noqa: F401  (registers the datasets)
from .base_dataset import DatasetBase
from .data_manager import DataManager, DatasetWrapper, build_data_loader
from .datum import Datum
from .registry import DATASET_REGISTRY, build_dataset
from .transforms import build_transform

__all__ = ["Datum", "DatasetBase", "DATASET_REGISTRY", "build_dataset", "build_transform", "DataManager",
           "DatasetWrapper", "build_data_loader"]
