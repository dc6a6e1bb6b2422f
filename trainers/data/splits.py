"""CoOp's split helpers in one place: read/save split JSON files and build train/val/test splits.

Split file format (CoOp's `split_zhou_<Dataset>.json`)::

    {"train": [[relative_path, label, classname], ...], "val": [...], "test": [...]}

gatescope also reads and writes an optional 4th element, the integer domain label
(`[relative_path, label, classname, domain]`); it is written only when some item has a
non-zero domain, so files of single-domain datasets stay byte-for-byte CoOp's format.

Randomness: `split_trainval` and `read_and_split_data` shuffle with python's `random`, like
CoOp, so the global seed decides a split the first time it is built; afterwards the saved file
is the split.
"""
import json
import math
import os
import os.path as osp
import random
from collections import defaultdict

from ..engine.utils import atomic_write_bytes
from .datum import Datum

__all__ = [
    "read_json", "write_json", "listdir_nohidden", "read_split", "save_split", "split_trainval",
    "read_and_split_data", "subsample_classes",
]

SUBSAMPLE_CHOICES = ("all", "base", "new")


def read_json(fpath):
    with open(fpath, "r", encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'"{fpath}" is not valid JSON ({e}); delete or fix it') from e


def write_json(obj, fpath):
    """Write JSON as Dassl does (indent 4), atomically so an interrupted run leaves no half file."""
    text = json.dumps(obj, indent=4, separators=(",", ": "))
    atomic_write_bytes(fpath, text.encode("utf-8"))


def listdir_nohidden(path, sort=False):
    """Names in `path` that do not start with "." (Dassl's helper)."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def read_split(filepath, path_prefix):
    """Read a CoOp split file; image paths are `path_prefix/<relative_path>`.

    Returns (train, val, test) lists of `Datum`. A listed image that does not exist raises a
    FileNotFoundError naming the image, the split file and the folder it was looked up in.
    """
    def _convert(items, split_name):
        out = []
        for entry in items:
            if len(entry) not in (3, 4):
                raise ValueError(
                    f'"{filepath}": entry {entry!r} in "{split_name}" should be '
                    "[relative_path, label, classname] or [relative_path, label, classname, domain]"
                )
            impath, label, classname = entry[:3]
            domain = int(entry[3]) if len(entry) == 4 else 0
            try:
                out.append(Datum(impath=osp.join(path_prefix, impath), label=int(label),
                                 domain=domain, classname=classname))
            except FileNotFoundError as e:
                raise FileNotFoundError(
                    f'{e}; it is listed in "{filepath}" relative to "{path_prefix}". Check '
                    "DATASET.ROOT and that the images are unpacked in CoOp's layout (CoOp's DATASETS.md)."
                ) from None
        return out

    print(f"Reading split from {filepath}")
    split = read_json(filepath)
    missing = [key for key in ("train", "val", "test") if key not in split]
    if missing:
        raise ValueError(f'"{filepath}" lacks the key(s) {missing}; a split file has "train", "val" and "test"')
    return tuple(_convert(split[key], key) for key in ("train", "val", "test"))


def save_split(train, val, test, filepath, path_prefix):
    """Save a split in CoOp's format, image paths relative to `path_prefix`."""
    with_domain = any(item.domain != 0 for items in (train, val, test) for item in items)
    prefix = osp.join(path_prefix, "")  # with a trailing separator

    def _extract(items):
        out = []
        for item in items:
            impath = item.impath
            # A path outside the prefix stays absolute; os.path.join keeps it on reading.
            if impath.startswith(prefix):
                impath = impath[len(prefix):]
            entry = [impath, item.label, item.classname]
            if with_domain:
                entry.append(item.domain)
            out.append(entry)
        return out

    write_json({"train": _extract(train), "val": _extract(val), "test": _extract(test)}, filepath)
    print(f"Saved split to {filepath}")


def split_trainval(trainval, p_val=0.2):
    """Split into train/val per class: round(n_c * p_val) items of each class go to val."""
    p_trn = 1 - p_val
    print(f"Splitting trainval into {p_trn:.0%} train and {p_val:.0%} val")
    tracker = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[item.label].append(idx)

    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            classname = trainval[idxs[0]].classname
            raise ValueError(
                f'class {label} ("{classname}") has {len(idxs)} train+val image(s): round(n * {p_val}) '
                "= 0, so none would be held out for validation; the class needs more images"
            )
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=(), new_cnames=None):
    """Build a split from `image_dir/<category>/<image>`: per class p_trn train, p_val val, rest test.

    Categories are the sorted sub-folder names (minus `ignored`), labelled 0..C-1 in that order;
    `new_cnames` maps a folder name to the class name used in prompts. Per class
    n_train = round(n * p_trn), n_val = round(n * p_val), n_test = n - n_train - n_val, each > 0.
    Unlike CoOp, file names are sorted before the shuffle, so the split depends only on the
    seed, not on the order in which the file system lists files.
    """
    categories = sorted(
        c for c in listdir_nohidden(image_dir) if c not in ignored and osp.isdir(osp.join(image_dir, c))
    )
    if not categories:
        raise FileNotFoundError(f'no class folders in "{image_dir}"; expected {image_dir}/<class>/<image>')
    p_tst = 1 - p_trn - p_val
    print(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")

    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = osp.join(image_dir, category)
        images = sorted(f for f in listdir_nohidden(category_dir) if osp.isfile(osp.join(category_dir, f)))
        images = [osp.join(category_dir, im) for im in images]
        random.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        n_test = n_total - n_train - n_val
        if not (n_train > 0 and n_val > 0 and n_test > 0):
            raise ValueError(
                f'class folder "{category_dir}" has {n_total} image(s): too few for a '
                f"{p_trn:.0%}/{p_val:.0%}/{p_tst:.0%} train/val/test split "
                f"(got {n_train}/{n_val}/{n_test}); each part needs at least one image"
            )
        classname = new_cnames.get(category, category) if new_cnames else category
        parts = ((train, images[:n_train]), (val, images[n_train:n_train + n_val]),
                 (test, images[n_train + n_val:]))
        for split, paths in parts:
            split.extend(Datum(impath=p, label=label, classname=classname) for p in paths)
    return train, val, test


def subsample_classes(*splits, subsample="all"):
    """Keep the base or new half of the classes (CoOp's base-to-new protocol), relabelled from 0.

    Labels are taken from the first split: sorted, the first m = ceil(n / 2) are "base", the
    rest "new". Each kept item keeps its image, domain and class name; its label becomes its
    rank among the kept labels. `None` splits pass through unchanged. Returns a list with one
    entry per split ("all" returns the splits untouched).
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise ValueError(f"DATASET.SUBSAMPLE_CLASSES must be one of {SUBSAMPLE_CHOICES}, got {subsample!r}")
    if subsample == "all":
        return list(splits)

    labels = sorted({item.label for item in splits[0]})
    n = len(labels)
    if n < 2:
        raise ValueError(
            f'DATASET.SUBSAMPLE_CLASSES "{subsample}" splits the classes into a base and a new half, '
            f"but the training data has {n} class(es); use SUBSAMPLE_CLASSES all"
        )
    m = math.ceil(n / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}

    output = []
    for split in splits:
        if split is None:
            output.append(None)
            continue
        output.append([
            Datum(impath=item.impath, label=relabeler[item.label], domain=item.domain,
                  classname=item.classname)
            for item in split if item.label in relabeler
        ])
    return output
