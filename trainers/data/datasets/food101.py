"""Food-101: `food-101/images/<class>/*.jpg`, `food-101/split_zhou_Food101.json`.

Without the split file one is built from the class folders (50% / 20% / 30%) and saved.
"""
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset


@DATASET_REGISTRY.register()
class Food101(SplitFileDataset):
    dataset_dir = "food-101"
    image_subdir = "images"
    split_file = "split_zhou_Food101.json"
    split_from_class_folders = True
