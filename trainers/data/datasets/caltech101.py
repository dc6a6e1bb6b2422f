"""Caltech-101: `caltech-101/101_ObjectCategories/<class>/*.jpg`, `caltech-101/split_zhou_Caltech101.json`.

Without the split file one is built from the class folders (minus the background and the
duplicate face class), with CoOp's singular class names.
"""
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset

IGNORED = ["BACKGROUND_Google", "Faces_easy"]
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@DATASET_REGISTRY.register()
class Caltech101(SplitFileDataset):
    dataset_dir = "caltech-101"
    image_subdir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    split_from_class_folders = True
    ignored_folders = tuple(IGNORED)
    new_cnames = NEW_CNAMES
