"""`DATASET_REGISTRY` and `build_dataset(cfg)`, Dassl's names.

A dataset class registers itself with `@DATASET_REGISTRY.register()` and is selected by
`DATASET.NAME` (CoOp's class names: "OxfordPets", "ImageNet", ...).
"""
from ..engine.registry import Registry

__all__ = ["DATASET_REGISTRY", "build_dataset", "mirror_registry", "resolve_dataset", "DEFAULT_DATASET"]

DATASET_REGISTRY = Registry("DATASET")
# What runs when no dataset is named: the generated demo dataset, in gatescope's cache.
DEFAULT_DATASET = "GatescopeDemo"


def resolve_dataset(cfg):
    """Fill in the dataset when the user named none; called once when the config is assembled.

    The trainers' demo configs name no dataset, so whatever dataset the user names (a dataset
    config, DATASET.NAME) is the one that runs. With none named, the demo dataset runs, generated
    in gatescope's cache. A DATASET.ROOT (--root) without a dataset is an error: it cannot be
    told whether the user meant their own data there or the demo dataset, and guessing the demo
    would train on the wrong data or write into their folder.
    """
    if cfg.DATASET.NAME:
        return cfg
    if cfg.DATASET.ROOT:
        raise ValueError(
            f'--root "{cfg.DATASET.ROOT}" is given but no dataset is named: add --dataset-config-file '
            "configs/datasets/<name>.yaml (imagefolder.yaml for a folder with one sub-folder per class), or "
            "configs/datasets/gatescope_demo.yaml to generate the demo dataset there. Without --root the demo "
            "dataset runs from gatescope's cache.")
    cfg.DATASET.NAME = DEFAULT_DATASET
    return cfg


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
