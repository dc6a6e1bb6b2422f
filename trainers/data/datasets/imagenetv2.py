"""ImageNetV2 (test only): `imagenetv2/imagenetv2-matched-frequency-format-val/<label>/*.jpeg`.

Folder "<k>" holds class k of ImageNet's `classnames.txt` order.
"""
from ..registry import DATASET_REGISTRY
from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetVariant):
    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"
    folder_pattern = "<label 0..999>"

    def class_folders(self, classnames, text_file):
        return [(str(label), name) for label, name in enumerate(classnames.values())]
