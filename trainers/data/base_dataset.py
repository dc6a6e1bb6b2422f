"""`DatasetBase` (Dassl's interface) plus the few-shot + base/new step every CoOp dataset repeats.

CoOp copies the same block into each dataset: sample K shots per class from train (and
min(K, 4) from val) with the global seed, cache the sample in
`<dataset_dir>/split_fewshot/shot_<K>-seed_<S>.pkl`, then keep the base or new half of the
classes. Here it is `DatasetBase.fewshot_and_subsample`, written once, which first checks that
the splits agree on the classes (`class_index.check_class_index`); the sample is drawn with its
own generator and its cache checked on loading (`fewshot_cache`).
"""
import os.path as osp
import random
import warnings
from collections import defaultdict

from .class_index import check_class_index
from .fewshot_cache import fewshot_cache_path, load_or_sample_fewshot
from .splits import subsample_classes

__all__ = ["DatasetBase", "dataset_root", "missing_data_error", "COOP_DATASETS_DOC"]

COOP_DATASETS_DOC = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


def dataset_root(cfg):
    """`cfg.DATASET.ROOT` as an absolute path (`~` expanded), as CoOp computes it."""
    return osp.abspath(osp.expanduser(cfg.DATASET.ROOT))


def missing_data_error(dataset_name, root, expected, note="", missing=None, dataset_dir=None):
    """A FileNotFoundError naming what is missing, everything expected, and where to read more.

    `expected` lists the paths the dataset needs; `missing` (default: those of `expected` that
    do not exist) is named first, or just `dataset_dir` when that whole folder is absent.
    """
    if dataset_dir is not None and not osp.isdir(dataset_dir):
        missing = [dataset_dir]
    elif missing is None:
        missing = [p for p in expected if not osp.exists(p)] or list(expected)
    lines = [
        f"{dataset_name}: missing {', '.join(missing)}",
        f"expected {' and '.join(expected)}" + (f" ({note})" if note else ""),
        f'DATASET.ROOT (--root) is "{root}"; see CoOp\'s DATASETS.md ({COOP_DATASETS_DOC}) '
        "for the downloads and this layout.",
    ]
    return FileNotFoundError("\n".join(lines))


class DatasetBase:
    """A dataset: lists of `Datum` for labelled train (`train_x`), unlabelled train (`train_u`),
    val and test, with `num_classes`, `lab2cname` and `classnames` derived from `train_x`.
    """

    dataset_dir = ""  # the folder of the dataset under DATASET.ROOT
    domains = []  # names of the domains, indexed by Datum.domain

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x or [])
        self._lab2cname, self._classnames = self.get_lab2cname(train_x or [])

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self):
        return self._lab2cname

    @property
    def classnames(self):
        return self._classnames

    @property
    def num_classes(self):
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source):
        """max(label) + 1 over `data_source` (0 when it is empty)."""
        labels = {item.label for item in data_source}
        return max(labels) + 1 if labels else 0

    @staticmethod
    def get_lab2cname(data_source):
        """({label: classname}, [classname of each label in sorted label order])."""
        mapping = {item.label: item.classname for item in data_source}
        labels = sorted(mapping)
        return mapping, [mapping[label] for label in labels]

    def check_input_domains(self, source_domains, target_domains):
        self.is_input_domain_valid(source_domains)
        self.is_input_domain_valid(target_domains)

    def is_input_domain_valid(self, input_domains):
        for domain in input_domains:
            if domain not in self.domains:
                raise ValueError(f"Input domain must belong to {self.domains}, but got [{domain}]")

    @staticmethod
    def split_dataset_by_label(data_source):
        """{label: [Datum, ...]} in order of first appearance."""
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source):
        """{domain: [Datum, ...]} in order of first appearance."""
        output = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output

    def generate_fewshot_dataset(self, *data_sources, num_shots=-1, repeat=False, rng=None):
        """K = `num_shots` items per class from each data source (Dassl's sampling, exactly).

        Per class, in order of first appearance: `rng.sample(items, K)` when the class has at
        least K items; otherwise all of them (a one-line warning names the class), or
        `rng.choices(items, k=K)` with `repeat=True`. `rng` defaults to Python's global `random`
        (Dassl's behaviour); `fewshot_and_subsample` passes a generator of its own. Returns one
        list, or a list of lists for several sources; `num_shots < 1` returns the sources unchanged.
        """
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else data_sources
        rng = rng or random

        print(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            dataset = []
            for label, items in self.split_dataset_by_label(data_source).items():
                if len(items) >= num_shots:
                    sampled = rng.sample(items, num_shots)
                elif repeat:
                    sampled = rng.choices(items, k=num_shots)
                else:
                    # Dassl's rule (kept: CoOp's 16-shot protocol meets such classes, e.g. in
                    # Caltech101), but said loudly, naming the class.
                    message = (f'class {label} ("{items[0].classname}") has only {len(items)} image(s), '
                               f"fewer than DATASET.NUM_SHOTS={num_shots}; using all of them")
                    print(f"Warning: {message}")
                    warnings.warn(message, stacklevel=2)
                    sampled = items
                dataset.extend(sampled)
            output.append(dataset)
        return output[0] if len(output) == 1 else output

    def fewshot_and_subsample(self, cfg, train, val=None, test=None, split_fewshot_dir=None, source=None):
        """CoOp's per-dataset tail: class check, cached K-shot sampling, then base/new subsampling.

        First the splits are checked to agree on one class index (`check_class_index`; errors
        name `source`, the file or folder they were read from). With `cfg.DATASET.NUM_SHOTS` =
        K >= 1: `train` becomes K shots per class and `val` min(K, 4) shots per class, loaded from
        `<split_fewshot_dir>/shot_<K>-seed_<cfg.SEED>.pkl` when it is valid for these splits
        (CoOp's caches load as they are) and drawn with `random.Random(cfg.SEED)` and written
        there otherwise (see `fewshot_cache`). A `None` val is neither sampled nor cached (CoOp's
        ImageNet caches hold only "train"). Then `cfg.DATASET.SUBSAMPLE_CLASSES` (all/base/new)
        is applied to all three splits. Returns (train, val, test).
        """
        if split_fewshot_dir is None:
            split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")
        dataset_dir = osp.dirname(osp.abspath(split_fewshot_dir))
        self.class_index = check_class_index([("train", train), ("val", val), ("test", test)],
                                             source=source or f"the splits of {type(self).__name__}",
                                             root=getattr(self, "image_dir", dataset_dir))
        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1:
            cache = fewshot_cache_path(split_fewshot_dir, num_shots, cfg.SEED)
            train, val = load_or_sample_fewshot(self, cache, num_shots, cfg.SEED, train, val, dataset_dir)
        subsample = cfg.DATASET.SUBSAMPLE_CLASSES
        train, val, test = subsample_classes(train, val, test, subsample=subsample)
        return train, val, test
