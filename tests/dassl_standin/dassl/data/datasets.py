from ..registry import Registry

DATASET_REGISTRY = Registry("DATASET")
