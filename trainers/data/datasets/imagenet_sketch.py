"""ImageNet-Sketch (test only): `imagenet-sketch/images/<wnid>/*.JPEG`."""
from ..registry import DATASET_REGISTRY
from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetVariant):
    dataset_dir = "imagenet-sketch"
    image_subdir = "images"
