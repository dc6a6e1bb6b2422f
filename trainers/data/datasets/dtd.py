"""Describable Textures: `dtd/images/<class>/*.jpg`, `dtd/split_zhou_DescribableTextures.json`.

Without the split file one is built from the class folders (50% / 20% / 30%) and saved.
"""
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset
from ..splits import read_and_split_data


@DATASET_REGISTRY.register()
class DescribableTextures(SplitFileDataset):
    dataset_dir = "dtd"
    image_subdir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    split_from_class_folders = True
    read_and_split_data = staticmethod(read_and_split_data)  # CoOp's other datasets call it on DTD
