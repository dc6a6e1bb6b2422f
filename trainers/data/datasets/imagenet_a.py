"""ImageNet-A (test only): `imagenet-adversarial/imagenet-a/<wnid>/*.jpg`.

Only 200 of ImageNet's classes have a folder; labels are positions among the folders present.
"""
from ..registry import DATASET_REGISTRY
from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetVariant):
    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
