"""GatescopeDemo: 10 shapes x 4 drawing styles (domains), generated on first use, no download.

Layout (CoOp's, plus a domain label per entry): `<ROOT>/gatescope_demo/images/<class>/*.png`,
`<ROOT>/gatescope_demo/split_gatescope_demo.json`, `<ROOT>/gatescope_demo/metadata.json`.
Generated with the default sizes of `generate_demo_dataset` (240 / 80 / 160 images). ROOT is
DATASET.ROOT when one is given, else gatescope's cache (`$GATESCOPE_CACHE/datasets`). It is the
dataset that runs when none is named (`registry.resolve_dataset`).
"""
from ..demo_images import DEMO_DOMAINS, DEMO_SPLIT_FILE, ensure_demo_dataset
from ..derived_cache import generated_dataset_root
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset


@DATASET_REGISTRY.register()
class GatescopeDemo(SplitFileDataset):
    dataset_dir = "gatescope_demo"
    image_subdir = "images"
    split_file = DEMO_SPLIT_FILE
    domains = list(DEMO_DOMAINS)
    missing_split_hint = "the demo dataset is incomplete: delete its folder and it is generated again"

    @classmethod
    def root_of(cls, cfg):
        return generated_dataset_root(cfg)  # DATASET.ROOT when given, else gatescope's cache

    def read_splits(self):
        ensure_demo_dataset(self.dataset_dir)
        return super().read_splits()
