"""`SplitFileDataset`: the shape shared by CoOp's datasets that keep a `split_zhou_<Name>.json`.

Layout: `<ROOT>/<dataset_dir>/<image_subdir>/...` holds the images and
`<ROOT>/<dataset_dir>/<split_file>` the split, with paths relative to the image folder. When the
split file is absent, a dataset that knows how (CoOp builds one for most of them) builds it
from the images or the original annotation files and saves it. Then the cached few-shot
sample and the base/new subsampling are applied (`DatasetBase.fewshot_and_subsample`).

A dataset file then only states its folders and, when it can build a split, how.
"""
import os.path as osp

from .base_dataset import DatasetBase, dataset_root, missing_data_error
from .splits import read_split, save_split

__all__ = ["SplitFileDataset", "load_matlab_file"]


class SplitFileDataset(DatasetBase):
    dataset_dir = ""  # folder under DATASET.ROOT ("" = DATASET.ROOT itself)
    image_subdir = ""  # image folder inside dataset_dir ("" = dataset_dir itself)
    split_file = ""  # split file name inside dataset_dir
    # What to do about a missing split file that `build_split` cannot rebuild (shown in the error).
    missing_split_hint = "gatescope cannot rebuild this split file from the original files; download it"

    def __init__(self, cfg):
        self.root = dataset_root(cfg)
        self.dataset_dir = osp.join(self.root, type(self).dataset_dir) if type(self).dataset_dir else self.root
        self.image_dir = osp.join(self.dataset_dir, self.image_subdir) if self.image_subdir else self.dataset_dir
        self.split_path = osp.join(self.dataset_dir, self.split_file)
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")

        train, val, test = self.read_splits()
        train, val, test = self.fewshot_and_subsample(cfg, train, val, test, self.split_fewshot_dir)
        super().__init__(train_x=train, val=val, test=test)

    def split_sources(self):
        """Paths `build_split` reads, or None when this dataset cannot build its split file."""
        return None

    def build_split(self):
        """(train, val, test) built from the original files when the split file is absent."""
        raise NotImplementedError(f"{type(self).__name__}.split_sources() names files to build the split from, "
                                  "so the class must also define build_split()")

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
                built_from = ", ".join(sources) if sources else f"the class folders in {self.image_dir}"
                note = f"without the split file, gatescope builds one from {built_from}"
            raise missing_data_error(type(self).__name__, self.root, [self.image_dir, self.split_path],
                                     note=note, missing=missing, dataset_dir=self.dataset_dir)
        if has_split:
            return read_split(self.split_path, self.image_dir)
        train, val, test = self.build_split()
        save_split(train, val, test, self.split_path, self.image_dir)
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
