"""ImageNet-R (test only): `imagenet-rendition/imagenet-r/<wnid>/*.jpg`.

Only 200 of ImageNet's classes have a folder; labels are positions among the folders present.
"""
from ..registry import DATASET_REGISTRY
from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetVariant):
    dataset_dir = "imagenet-rendition"
    image_subdir = "imagenet-r"
