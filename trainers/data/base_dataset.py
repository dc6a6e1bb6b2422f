"""`DatasetBase` (Dassl's interface) plus the few-shot + base/new step every CoOp dataset repeats.

CoOp copies the same block into each dataset: sample K shots per class from train (and
min(K, 4) from val) with the global seed, cache the sample in
`<dataset_dir>/split_fewshot/shot_<K>-seed_<S>.pkl`, then keep the base or new half of the
classes. Here it is `DatasetBase.fewshot_and_subsample`, written once.
"""
import os.path as osp
import random
import warnings
from collections import defaultdict

from .datum import Datum
from .safe_pickle import dump_datum_pickle, load_datum_pickle
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

    def generate_fewshot_dataset(self, *data_sources, num_shots=-1, repeat=False):
        """K = `num_shots` items per class from each data source (Dassl's sampling, exactly).

        Per class, in order of first appearance: `random.sample(items, K)` when the class has
        at least K items; otherwise all of them (a one-line warning names the class), or
        `random.choices(items, k=K)` with `repeat=True`. Python's global `random` is used, so
        the run's seed decides the sample. Returns one list, or a list of lists for several
        sources; `num_shots < 1` returns the sources unchanged.
        """
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else data_sources

        print(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            dataset = []
            for label, items in self.split_dataset_by_label(data_source).items():
                if len(items) >= num_shots:
                    sampled = random.sample(items, num_shots)
                elif repeat:
                    sampled = random.choices(items, k=num_shots)
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

    def fewshot_and_subsample(self, cfg, train, val=None, test=None, split_fewshot_dir=None):
        """CoOp's per-dataset tail: cached K-shot sampling, then base/new class subsampling.

        With `cfg.DATASET.NUM_SHOTS` = K >= 1: `train` becomes K shots per class and `val`
        min(K, 4) shots per class, loaded from `<split_fewshot_dir>/shot_<K>-seed_<cfg.SEED>.pkl`
        when it exists (CoOp's caches load as they are) and written there otherwise. A `None`
        val is neither sampled nor cached (CoOp's ImageNet caches hold only "train").
        Then `cfg.DATASET.SUBSAMPLE_CLASSES` (all/base/new) is applied to all three splits.
        Returns (train, val, test).
        """
        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1:
            if split_fewshot_dir is None:
                split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")
            cache = osp.join(split_fewshot_dir, f"shot_{num_shots}-seed_{cfg.SEED}.pkl")
            train, val = self._load_or_sample_fewshot(cache, num_shots, train, val)
        subsample = cfg.DATASET.SUBSAMPLE_CLASSES
        train, val, test = subsample_classes(train, val, test, subsample=subsample)
        return train, val, test

    def _load_or_sample_fewshot(self, cache, num_shots, train, val):
        if osp.exists(cache):
            print(f"Loading preprocessed few-shot data from {cache}")
            data = load_datum_pickle(cache)
            wanted = ("train",) if val is None else ("train", "val")
            if not isinstance(data, dict) or any(not _is_datum_list(data.get(k)) for k in wanted):
                raise ValueError(
                    f'"{cache}" should hold a dict with {list(wanted)} lists of Datum, found '
                    f"{_describe(data)}. Delete it and it is sampled again."
                )
            return data["train"], (data["val"] if val is not None else None)

        train = self.generate_fewshot_dataset(train, num_shots=num_shots)
        data = {"train": train}
        if val is not None:
            val = self.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
            data["val"] = val
        print(f"Saving preprocessed few-shot data to {cache}")
        dump_datum_pickle(data, cache)
        return train, val


def _is_datum_list(obj):
    return isinstance(obj, list) and all(isinstance(item, Datum) for item in obj)


def _describe(obj):
    if isinstance(obj, dict):
        return "a dict with keys " + str(sorted(map(str, obj)))
    return f"a {type(obj).__name__}"
