"""CoOp's datasets (CoOp's class names and folder layouts), ImageFolder and the demo dataset.

Importing this package registers them all in `DATASET_REGISTRY`; with `GATESCOPE_ENGINE=dassl`
they are registered in Dassl's `DATASET_REGISTRY` too.
"""
from . import (  # noqa: F401  (each module registers its dataset)
    caltech101,
    dtd,
    eurosat,
    fgvc_aircraft,
    food101,
    gatescope_demo,
    gatescope_domains,
    imagefolder,
    imagenet,
    imagenet_a,
    imagenet_r,
    imagenet_sketch,
    imagenetv2,
    oxford_flowers,
    oxford_pets,
    stanford_cars,
    sun397,
    ucf101,
)
from ...engine import ENGINE
from ..registry import DATASET_REGISTRY, mirror_registry

if ENGINE == "dassl":
    from dassl.data.datasets import DATASET_REGISTRY as DASSL_DATASET_REGISTRY

    mirror_registry(DATASET_REGISTRY, DASSL_DATASET_REGISTRY)
