"""`SplitFileDataset`: the shape shared by CoOp's datasets that keep a `split_zhou_<Name>.json`.

Layout: `<ROOT>/<dataset_dir>/<image_subdir>/...` holds the images and
`<ROOT>/<dataset_dir>/<split_file>` the split, with paths relative to the image folder. When the
split file is absent, a dataset that knows how (CoOp builds one for most of them) builds it
from the images or the original annotation files and saves it. Then the cached few-shot
sample and the base/new subsampling are applied (`DatasetBase.fewshot_and_subsample`).

A built split is checked (one class index, `check_class_index`) before it is written, under a
lock so that concurrent runs build it once, and kept in memory when the folder is read-only.
A split built from class folders records their file counts; when the folders change later, the
saved split no longer describes them and reading it stops with an error naming the file to
delete (a split is the experiment's definition, so it is never silently replaced).

A dataset file then only states its folders and, when it can build a split, how.
"""
import os.path as osp

from .base_dataset import DatasetBase, dataset_root, missing_data_error
from .class_index import check_class_index
from .derived_cache import cache_lock, write_or_keep_in_memory
from .splits import class_folder_counts, folder_changes, load_split, read_and_split_data, save_split

__all__ = ["SplitFileDataset", "load_matlab_file", "StaleSplitError"]


class StaleSplitError(ValueError):
    """A split file gatescope built from class folders that have changed since."""


class SplitFileDataset(DatasetBase):
    dataset_dir = ""  # folder under DATASET.ROOT ("" = DATASET.ROOT itself)
    image_subdir = ""  # image folder inside dataset_dir ("" = dataset_dir itself)
    split_file = ""  # split file name inside dataset_dir
    # What to do about a missing split file that `build_split` cannot rebuild (shown in the error).
    missing_split_hint = "gatescope cannot rebuild this split file from the original files; download it"
    # Datasets whose split is built from the class folders of the image folder (DTD, EuroSAT, ...):
    # folders that are not classes, and {folder: class name} where the prompt's name differs.
    split_from_class_folders = False
    ignored_folders = ()
    new_cnames = None

    @classmethod
    def root_of(cls, cfg):
        """The data root this dataset lives under (DATASET.ROOT; generated datasets may differ)."""
        return dataset_root(cfg)

    def __init__(self, cfg):
        self.root = self.root_of(cfg)
        self.dataset_dir = osp.join(self.root, type(self).dataset_dir) if type(self).dataset_dir else self.root
        self.image_dir = osp.join(self.dataset_dir, self.image_subdir) if self.image_subdir else self.dataset_dir
        self.split_path = osp.join(self.dataset_dir, self.split_file)
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")
        self.split_source = self.split_path

        train, val, test = self.read_splits()
        train, val, test = self.fewshot_and_subsample(cfg, train, val, test, self.split_fewshot_dir,
                                                      source=self.split_source)
        super().__init__(train_x=train, val=val, test=test)

    def split_sources(self):
        """Paths `build_split` reads ([] for the class folders alone), or None when it cannot build one."""
        return [] if self.split_from_class_folders else None

    def build_split(self):
        """(train, val, test) built from the original files when the split file is absent."""
        if self.split_from_class_folders:
            return read_and_split_data(self.image_dir, ignored=self.ignored_folders,
                                       new_cnames=self.classnames_of_folders())
        raise NotImplementedError(f"{type(self).__name__}.split_sources() names files to build the split from, "
                                  "so the class must also define build_split()")

    def classnames_of_folders(self):
        """{class folder: class name} for a split built from class folders (default: `new_cnames`)."""
        return self.new_cnames

    def build_record(self):
        """What a built split is derived from, stored in the split file (None: nothing to check)."""
        if not self.split_from_class_folders:
            return None
        return {"built_from": "class folders", "folders": class_folder_counts(self.image_dir, self.ignored_folders)}

    def check_split_is_current(self, record):
        """Raise StaleSplitError when the class folders a built split recorded have changed since."""
        if record is None or not self.split_from_class_folders:
            return
        folders = record.get("folders") if isinstance(record, dict) else None
        if not isinstance(folders, dict) or not all(isinstance(n, int) for n in folders.values()):
            raise StaleSplitError(f'"{self.split_path}": its "gatescope" record is damaged (expected the class '
                                  "folders' file counts). Delete the file and the split is built again.")
        changes = folder_changes(folders, class_folder_counts(self.image_dir, self.ignored_folders))
        if changes:
            raise StaleSplitError(
                f'"{self.split_path}" was built by gatescope from the class folders of "{self.image_dir}", which have '
                f"changed since ({changes}). Delete it and the split is built again from the folders as they are "
                "now (a new split assigns the images to train/val/test afresh, so few-shot samples change too).")

    def read_splits(self):
        """(train, val, test): from the split file, else built by `build_split` and saved."""
        has_split = osp.isfile(self.split_path)
        sources = None if has_split else self.split_sources()
        missing = [p for p in [self.image_dir] + list(sources or []) if not osp.exists(p)]
        if not has_split and (sources is None or missing):
            missing.append(self.split_path)
        if missing:
            if has_split:
                note = ""
            elif sources is None:
                note = self.missing_split_hint
            else:
                note = f"without the split file, gatescope builds one from {self.built_from(sources)}"
            raise missing_data_error(type(self).__name__, self.root, [self.image_dir, self.split_path],
                                     note=note, missing=missing, dataset_dir=self.dataset_dir)
        if has_split:
            return self._read_split_file()
        with cache_lock(self.split_path, "split file"):
            if osp.isfile(self.split_path):  # another run built it while this one waited
                return self._read_split_file()
            train, val, test = self.build_split()
            self.split_source = f"the split built from {self.built_from(sources)}"
            # Checked before it is written: a saved split must be one a run can use.
            check_class_index([("train", train), ("val", val), ("test", test)], self.split_source,
                              root=self.image_dir)
            record = self.build_record()
            write_or_keep_in_memory(self.split_path,
                                    lambda path: save_split(train, val, test, path, self.image_dir, record=record),
                                    "split")
        return train, val, test

    def built_from(self, sources):
        return ", ".join(sources) if sources else f"the class folders in {self.image_dir}"

    def _read_split_file(self):
        train, val, test, _ = load_split(self.split_path, self.image_dir, check_record=self.check_split_is_current)
        self.split_source = self.split_path
        return train, val, test


def load_matlab_file(path, split_path):
    """`scipy.io.loadmat(path)`; without scipy, say what to install or to download instead."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError(
            f'building "{split_path}" reads the MATLAB file "{path}", which needs scipy: '
            f"`pip install scipy`, or download the split file CoOp provides to {split_path}"
        ) from None
    return loadmat(path)
