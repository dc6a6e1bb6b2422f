"""EuroSAT: `eurosat/2750/<class>/*.jpg`, `eurosat/split_zhou_EuroSAT.json`.

Without the split file one is built from the class folders, with CoOp's readable class names.
"""
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset

NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(SplitFileDataset):
    dataset_dir = "eurosat"
    image_subdir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    split_from_class_folders = True
    new_cnames = NEW_CNAMES
