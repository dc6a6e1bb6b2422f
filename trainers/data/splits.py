"""CoOp's split helpers in one place: read/save split JSON files and build train/val/test splits.

Split file format (CoOp's `split_zhou_<Dataset>.json`)::

    {"train": [[relative_path, label, classname], ...], "val": [...], "test": [...]}

gatescope also reads and writes an optional 4th element, the integer domain label
(`[relative_path, label, classname, domain]`); it is written only when some item has a
non-zero domain, so files of single-domain datasets stay byte-for-byte CoOp's format.

Randomness: `split_trainval` and `read_and_split_data` shuffle with a generator of their own
(`split_rng()`, seeded with `SPLIT_SEED`), not with the run's seed as CoOp does: a built split
then depends only on the data, and building it leaves the run's random state untouched, so a
run that builds a split trains exactly as one that reads it. The saved file is the split.

A split file gatescope builds from class folders also records the folders' file counts under
the key "gatescope" (CoOp's readers ignore it), so a split that no longer matches its folders
is recognised (see `class_folder_counts`).
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
    "read_and_split_data", "subsample_classes", "load_split", "split_rng", "SPLIT_SEED", "class_folder_counts",
    "folder_changes", "describe_folder", "BUILD_RECORD_KEY", "read_lines", "line_error",
]

SUBSAMPLE_CHOICES = ("all", "base", "new")
SPLIT_SEED = 1  # seed of `split_rng`, the builders' own generator
BUILD_RECORD_KEY = "gatescope"  # key of the build record in split files gatescope writes


def _read_utf8(fpath):
    with open(fpath, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is fine
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f'"{fpath}" is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} (line {line}) cannot be '
            "decoded. Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or delete it if gatescope "
            "wrote it and it is built again."
        ) from None


def read_json(fpath):
    """The JSON in `fpath`; an error naming the file, the line and the fix when it is not UTF-8 JSON."""
    text = _read_utf8(fpath)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f'"{fpath}" is not valid JSON ({e}); delete or fix it') from e


def read_lines(fpath):
    """[(line number, stripped line)] of the non-blank lines of a UTF-8 text file (annotation lists).

    A byte that is not UTF-8 is an error naming the file and the line.
    """
    return [(n, line.strip()) for n, line in enumerate(_read_utf8(fpath).splitlines(), start=1) if line.strip()]


def line_error(fpath, number, line, expected):
    """A ValueError for line `number` of an annotation file that does not have the expected form."""
    return ValueError(f'"{fpath}", line {number}: {line!r} is not of the form {expected}; fix or remove the line')


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


def split_rng():
    """The generator every split builder shuffles with: seeded with `SPLIT_SEED`, never the run's seed.

    A split is built once and saved; drawing it from the run's (global) generator would make the
    split depend on which seed happened to run first, and a run that builds it draw different
    batches afterwards than a run that reads it.
    """
    return random.Random(SPLIT_SEED)


_ENTRY_FORMAT = "[relative_path, label, classname] or [relative_path, label, classname, domain]"


def _entry_error(filepath, split_name, index, entry, problem):
    return ValueError(
        f'"{filepath}": entry {index} of "{split_name}" {entry!r}: {problem}. Each entry is {_ENTRY_FORMAT}, '
        "label being the class index 0..C-1 and domain a non-negative integer; fix the entry, or delete the "
        "file if gatescope wrote it (it is built again).")


def _is_index(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_split(filepath, path_prefix, check_record=None):
    """`read_split`, plus the record gatescope keeps in split files it built (None in CoOp's).

    `check_record(record)` is called before any entry is read (a stale split is reported as
    stale, not as a missing image). Returns (train, val, test, record).
    """
    print(f"Reading split from {filepath}")
    split = read_json(filepath)
    if not isinstance(split, dict):
        raise ValueError(f'"{filepath}" holds a JSON {type(split).__name__}; a split file is an object with '
                         '"train", "val" and "test" lists')
    missing = [key for key in ("train", "val", "test") if key not in split]
    if missing:
        raise ValueError(f'"{filepath}" lacks the key(s) {missing}; a split file has "train", "val" and "test"')
    if check_record is not None:
        check_record(split.get(BUILD_RECORD_KEY))

    def _convert(items, split_name):
        if not isinstance(items, list):
            raise ValueError(f'"{filepath}": "{split_name}" is a JSON {type(items).__name__}; it should be a list '
                             f"of entries {_ENTRY_FORMAT}")
        out = []
        for index, entry in enumerate(items):
            if not isinstance(entry, list) or len(entry) not in (3, 4):
                raise _entry_error(filepath, split_name, index, entry, "not a list of 3 or 4 elements")
            impath, label, classname = entry[:3]
            domain = entry[3] if len(entry) == 4 else 0
            if not isinstance(impath, str) or not impath:
                raise _entry_error(filepath, split_name, index, entry, f"the image path {impath!r} is not a string")
            if not _is_index(label):
                raise _entry_error(filepath, split_name, index, entry,
                                   f"the label {label!r} is not a non-negative integer")
            if not isinstance(classname, str) or not classname.strip():
                raise _entry_error(filepath, split_name, index, entry,
                                   f"the class name {classname!r} is not a non-empty string")
            if not _is_index(domain):
                raise _entry_error(filepath, split_name, index, entry,
                                   f"the domain {domain!r} is not a non-negative integer")
            try:
                out.append(Datum(impath=osp.join(path_prefix, impath), label=label, domain=domain,
                                 classname=classname))
            except FileNotFoundError as e:
                raise FileNotFoundError(
                    f'{e}; it is entry {index} of "{split_name}" in "{filepath}", relative to "{path_prefix}", '
                    f"which holds {describe_folder(path_prefix)}. Check DATASET.ROOT and that the images are "
                    "unpacked in CoOp's layout (CoOp's DATASETS.md)."
                ) from None
        return out

    train, val, test = (_convert(split[key], key) for key in ("train", "val", "test"))
    return train, val, test, split.get(BUILD_RECORD_KEY)


def read_split(filepath, path_prefix):
    """Read a CoOp split file; image paths are `path_prefix/<relative_path>`.

    Returns (train, val, test) lists of `Datum`. Every entry is checked for form (a path, an
    integer label >= 0, a class name, an optional integer domain); a malformed entry or a
    listed image that does not exist raises an error naming the split file, the entry and the
    folder it was looked up in. A file that is not UTF-8 is named with the offending line.
    """
    return load_split(filepath, path_prefix)[:3]


def save_split(train, val, test, filepath, path_prefix, record=None):
    """Save a split in CoOp's format, image paths relative to `path_prefix`.

    `record` (what gatescope built the split from) is stored under the key "gatescope"; CoOp's
    readers look only at "train", "val" and "test".
    """
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

    content = {"train": _extract(train), "val": _extract(val), "test": _extract(test)}
    if record is not None:
        content[BUILD_RECORD_KEY] = record
    write_json(content, filepath)
    print(f"Saved split to {filepath}")


def class_folder_counts(image_dir, ignored=()):
    """{class folder: number of files in it} for the sub-folders of `image_dir` (hidden ones left out).

    What a split built from class folders is derived from: stored with the split, and compared
    on reading to tell whether the folders changed since.
    """
    counts = {}
    for name in sorted(listdir_nohidden(image_dir)):
        folder = osp.join(image_dir, name)
        if name in ignored or not osp.isdir(folder):
            continue
        counts[name] = sum(1 for f in listdir_nohidden(folder) if osp.isfile(osp.join(folder, f)))
    return counts


def folder_changes(recorded, current):
    """A short description of how {folder: count} `current` differs from `recorded` ("" if it does not)."""
    added = sorted(set(current) - set(recorded))
    removed = sorted(set(recorded) - set(current))
    changed = [f"{name} ({recorded[name]} -> {current[name]} files)" for name in sorted(set(current) & set(recorded))
               if recorded[name] != current[name]]
    parts = []
    for label, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            parts.append(f"{label}: {', '.join(names[:5])}" + (f" and {len(names) - 5} more" if len(names) > 5 else ""))
    return "; ".join(parts)


def describe_folder(path):
    """What a folder holds, for layout errors: "3 folders (a, b, c) and 12 files (x.jpg, ...)"."""
    if not osp.isdir(path):
        return "no such folder" if not osp.exists(path) else "a file, not a folder"
    names = sorted(listdir_nohidden(path))
    folders = [n for n in names if osp.isdir(osp.join(path, n))]
    files = [n for n in names if n not in folders]

    def some(items):
        shown = ", ".join(items[:3])
        return f" ({shown}{', ...' if len(items) > 3 else ''})" if items else ""
    if not names:
        return "an empty folder"
    return f"{len(folders)} folder(s){some(folders)} and {len(files)} file(s){some(files)}"


def split_trainval(trainval, p_val=0.2, rng=None):
    """Split into train/val per class: round(n_c * p_val) items of each class go to val.

    Each class's items are shuffled with `rng` (default: a fresh `split_rng()`).
    """
    rng = rng or split_rng()
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
        rng.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=(), new_cnames=None, rng=None):
    """Build a split from `image_dir/<category>/<image>`: per class p_trn train, p_val val, rest test.

    Categories are the sorted sub-folder names (minus `ignored`), labelled 0..C-1 in that order;
    `new_cnames` maps a folder name to the class name used in prompts. Per class
    n_train = round(n * p_trn), n_val = round(n * p_val), n_test = n - n_train - n_val, each > 0.
    Unlike CoOp, file names are sorted before the shuffle and the shuffle uses `rng` (default:
    a fresh `split_rng()`), so the split depends only on the files, not on the run's seed or on
    the order in which the file system lists files.
    """
    rng = rng or split_rng()
    categories = sorted(
        c for c in listdir_nohidden(image_dir) if c not in ignored and osp.isdir(osp.join(image_dir, c))
    )
    if not categories:
        raise FileNotFoundError(
            f'no class folders in "{image_dir}": expected one sub-folder per class, {image_dir}/<class>/<image>; '
            f"found {describe_folder(image_dir)}")
    p_tst = 1 - p_trn - p_val
    print(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")

    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = osp.join(image_dir, category)
        images = sorted(f for f in listdir_nohidden(category_dir) if osp.isfile(osp.join(category_dir, f)))
        images = [osp.join(category_dir, im) for im in images]
        rng.shuffle(images)
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
