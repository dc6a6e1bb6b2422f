"""`DATASET_REGISTRY` and `build_dataset(cfg)`, Dassl's names.

A dataset class registers itself with `@DATASET_REGISTRY.register()` and is selected by
`DATASET.NAME` (CoOp's class names: "OxfordPets", "ImageNet", ...).
"""
from ..engine.registry import Registry

__all__ = ["DATASET_REGISTRY", "build_dataset", "mirror_registry"]

DATASET_REGISTRY = Registry("DATASET")


def build_dataset(cfg):
    """Instantiate the dataset named by `cfg.DATASET.NAME` (an unknown name lists the known ones)."""
    name = cfg.DATASET.NAME
    if not name:
        raise ValueError(
            "DATASET.NAME is empty: pass --dataset-config-file configs/datasets/<name>.yaml or set "
            f"DATASET.NAME to one of: {', '.join(sorted(DATASET_REGISTRY.registered_names()))}"
        )
    if cfg.VERBOSE:
        print(f"Loading dataset: {name}")
    return DATASET_REGISTRY.get(name)(cfg)


def mirror_registry(source, target):
    """Register every entry of `source` in `target` under the same name, skipping names it has.

    With `GATESCOPE_ENGINE=dassl`, Dassl's DataManager builds datasets from Dassl's own
    `DATASET_REGISTRY`; mirroring gatescope's datasets into it lets `DATASET.NAME` select them
    there too (their `Datum` and `DatasetBase` interfaces are Dassl's).
    """
    existing = set(target.registered_names())
    for name in source.registered_names():
        if name not in existing:
            target.register(source.get(name))
