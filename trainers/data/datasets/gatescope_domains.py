"""The controlled benchmark's tasks (see trainers/data/domain_tasks.py), generated on first use.

`GatescopeHomogeneous`: one domain; `GatescopeMultiDomain`: two domains whose label mappings
differ; `GatescopeGraded`: the graded family, its knobs under `DATASET.DOMAIN_TASK` (STRENGTH,
NUM_DOMAINS, LABELS), each setting in its own folder `gatescope_graded/<s..._n..._labels>`.
`DATASET.SOURCE_DOMAINS` (e.g. ["dark"]) keeps only the named domains in every split: the
oracle of the benchmark trains one prompt per domain this way.
"""
import os.path as osp

from ..derived_cache import generated_dataset_root
from ..domain_tasks import GRADED, SPLIT_FILE, TASKS, GradedSpec, ensure_domain_task
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset


class DomainTaskDataset(SplitFileDataset):
    task = ""
    image_subdir = "images"
    split_file = SPLIT_FILE
    missing_split_hint = "the domain task is incomplete: delete its folder and it is generated again"
    spec = None  # a GradedSpec for the graded task

    @classmethod
    def root_of(cls, cfg):
        return generated_dataset_root(cfg)  # DATASET.ROOT when given, else gatescope's cache

    def __init__(self, cfg):
        self.keep_domains = list(cfg.DATASET.SOURCE_DOMAINS or [])
        unknown = [d for d in self.keep_domains if d not in self.domains]
        if unknown:
            raise ValueError(f"DATASET.SOURCE_DOMAINS {unknown} are not domains of {type(self).__name__}; "
                             f"its domains are {self.domains}")
        super().__init__(cfg)

    def read_splits(self):
        ensure_domain_task(self.dataset_dir, self.task, self.spec)
        splits = super().read_splits()
        if not self.keep_domains:
            return splits
        keep = {self.domains.index(d) for d in self.keep_domains}
        # Few-shot samples of a domain subset are cached apart from the full task's.
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot_" + "+".join(self.keep_domains))
        return tuple([item for item in split if item.domain in keep] for split in splits)


@DATASET_REGISTRY.register()
class GatescopeHomogeneous(DomainTaskDataset):
    task = "homogeneous"
    dataset_dir = "gatescope_homogeneous"
    domains = list(TASKS["homogeneous"]["domains"])


@DATASET_REGISTRY.register()
class GatescopeMultiDomain(DomainTaskDataset):
    task = "multidomain"
    dataset_dir = "gatescope_multidomain"
    domains = list(TASKS["multidomain"]["domains"])


@DATASET_REGISTRY.register()
class GatescopeGraded(DomainTaskDataset):
    task = GRADED
    dataset_dir = "gatescope_graded"  # the parent folder; each setting has a subfolder

    def __init__(self, cfg):
        self.spec = GradedSpec.from_cfg(cfg)
        self.domains = list(self.spec.domains)
        super().__init__(cfg)

    def read_splits(self):
        # Each setting in its own subfolder (SplitFileDataset pointed the paths at the parent).
        self.dataset_dir = osp.join(self.root, type(self).dataset_dir, self.spec.folder)
        self.image_dir = osp.join(self.dataset_dir, self.image_subdir)
        self.split_path = osp.join(self.dataset_dir, self.split_file)
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")
        return super().read_splits()
