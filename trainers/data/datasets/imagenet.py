"""ImageNet: `imagenet/images/{train,val}/<wnid>/*.JPEG`, `imagenet/classnames.txt`.

The file list is cached in `imagenet/preprocessed.pkl` ({"train", "test"}, CoOp's format; read
through the restricted unpickler). The official val set is the test set and, as in CoOp, also
the val set. Few-shot caches hold only "train".

The layout is checked before anything is cached: both `images/train` and `images/val` must hold
one folder per class (the validation tarball unpacks flat, which is named as such), the same
classes in both (a label is a folder's position among the sorted folders, so differing folders
would give one label two meanings), every folder listed in `classnames.txt`, none empty. A
`preprocessed.pkl` (CoOp's or gatescope's) is used only if it lists exactly the images now in
the folders, with the labels and names they now have; its paths are resolved under the current
folder, so a moved dataset keeps working. Otherwise it is rebuilt, with a one-line notice.

Also `ImageNetVariant`, the base of the test-only variants (ImageNetV2, -Sketch, -A, -R).
"""
import os
import os.path as osp
from collections import OrderedDict

from ..base_dataset import DatasetBase, dataset_root, missing_data_error
from ..class_index import check_class_index
from ..datum import Datum
from ..derived_cache import cache_lock, write_or_keep_in_memory
from ..registry import DATASET_REGISTRY
from ..safe_pickle import dump_datum_pickle, load_datum_lists
from ..splits import describe_folder, line_error, listdir_nohidden, read_lines

# Where ImageNet's validation images go when the tarball was unpacked flat.
FLAT_VAL_HINT = ("ImageNet's validation tarball unpacks flat: move each image into the folder of its class (e.g. "
                 "with the valprep.sh script of PyTorch's ImageNet example), then run again")


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder whose layout is not the one expected (the message says what was found)."""


def read_classnames(text_file):
    """OrderedDict {folder (wnid): class name} from lines "<wnid> <class name>".

    A line without a name, or a folder listed twice, is an error naming the file and the line.
    """
    classnames = OrderedDict()
    for number, line in read_lines(text_file):
        fields = line.split(" ")
        wnid, name = fields[0], " ".join(fields[1:]).strip()
        if not name:
            raise line_error(text_file, number, line, "'<folder (wnid)> <class name>'")
        if wnid in classnames:
            raise ValueError(f'"{text_file}", line {number}: folder {wnid} is listed twice (first as '
                             f'"{classnames[wnid]}"); each class folder has one line')
        classnames[wnid] = name
    return classnames


def name_folders(folders, classnames, image_dir, text_file):
    """[(folder, class name)] for wnid-named folders; a folder missing from the class list is an error."""
    unknown = [f for f in folders if f not in classnames]
    if unknown:
        raise KeyError(f'class folder(s) {unknown[:5]} in "{image_dir}" are not listed in "{text_file}"')
    return [(f, classnames[f]) for f in folders]


def read_class_folders(image_dir, named_folders):
    """A Datum for every image in `image_dir/<folder>/`; label = index in `named_folders`."""
    items = []
    for label, (folder, classname) in enumerate(named_folders):
        class_dir = osp.join(image_dir, folder)
        if not osp.isdir(class_dir):
            raise FileNotFoundError(f'class folder "{class_dir}" is missing')
        for imname in sorted(listdir_nohidden(class_dir)):
            items.append(Datum(impath=osp.join(class_dir, imname), label=label, classname=classname))
    return items


def sorted_subfolders(path, ignored=()):
    return sorted(f for f in listdir_nohidden(path) if f not in ignored and osp.isdir(osp.join(path, f)))


def list_class_folders(dataset_name, split_dir, layout, classnames, text_file, ignored=(), hint=""):
    """OrderedDict {class folder: sorted image names} of `split_dir`, its layout checked.

    A folder without class folders, a class folder not in `classnames` or an empty class folder
    is an error saying which folder was read, the layout expected (`layout`) and what was found.
    """
    if not osp.isdir(split_dir):
        raise DatasetLayoutError(f'{dataset_name}: "{split_dir}" is missing ({describe_folder(split_dir)}); '
                                 f"expected {layout}")
    folders = sorted_subfolders(split_dir, ignored)
    if not folders:
        raise DatasetLayoutError(
            f'{dataset_name}: "{split_dir}" holds {describe_folder(split_dir)} but no class folders; expected '
            f'{layout}, one folder per class listed in "{text_file}".' + (f" {hint}." if hint else "")
            + " Nothing was cached.")
    name_folders(folders, classnames, split_dir, text_file)
    listing = OrderedDict()
    for folder in folders:
        class_dir = osp.join(split_dir, folder)
        listing[folder] = sorted(listdir_nohidden(class_dir))
    empty = [f for f, names in listing.items() if not names]
    if empty:
        raise DatasetLayoutError(
            f'{dataset_name}: class folder(s) {", ".join(empty[:5])} in "{split_dir}" hold no image; expected '
            f"{layout}. Put the class's images there or remove the folder.")
    return listing


@DATASET_REGISTRY.register()
class ImageNet(DatasetBase):
    dataset_dir = "imagenet"
    read_classnames = staticmethod(read_classnames)  # CoOp's variants call ImageNet.read_classnames
    # images/<folder> of each list in preprocessed.pkl
    LISTS = (("train", "train"), ("test", "val"))

    def __init__(self, cfg):
        self.root = dataset_root(cfg)
        self.dataset_dir = osp.join(self.root, type(self).dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, "images")
        self.preprocessed = osp.join(self.dataset_dir, "preprocessed.pkl")
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")
        self.text_file = osp.join(self.dataset_dir, "classnames.txt")
        self.split_source = f'the class folders of "{self.image_dir}" and "{self.text_file}"'

        train, test = self.read_file_lists()
        train, _, test = self.fewshot_and_subsample(cfg, train, None, test, self.split_fewshot_dir,
                                                    source=self.split_source)
        super().__init__(train_x=train, val=test, test=test)

    def read_file_lists(self):
        """(train, test): from preprocessed.pkl when it matches the folders, else listed and cached."""
        expected = [osp.join(self.image_dir, "train"), osp.join(self.image_dir, "val"), self.text_file]
        if any(not osp.exists(p) for p in expected):
            raise missing_data_error(type(self).__name__, self.root, expected, dataset_dir=self.dataset_dir)
        classnames = read_classnames(self.text_file)
        listing = {folder: list_class_folders(type(self).__name__, osp.join(self.image_dir, folder),
                                              f"{self.image_dir}/{folder}/<wnid>/*.JPEG", classnames, self.text_file,
                                              hint=FLAT_VAL_HINT if folder == "val" else "")
                   for _, folder in self.LISTS}
        only_train = [f for f in listing["train"] if f not in listing["val"]]
        only_val = [f for f in listing["val"] if f not in listing["train"]]
        if only_train or only_val:
            raise DatasetLayoutError(
                f'{type(self).__name__}: the class folders of "{self.image_dir}/train" and "{self.image_dir}/val" '
                f"differ (only in train: {', '.join(only_train[:5]) or '-'}; only in val: "
                f"{', '.join(only_val[:5]) or '-'}). A label is a folder's position among the sorted folders, so "
                "both need the same classes: add the missing folders or remove the extra ones.")

        if osp.exists(self.preprocessed):
            lists, _ = self.read_preprocessed(listing, classnames)
            if lists is not None:
                print(f"Loading preprocessed ImageNet file list from {self.preprocessed}")
                return lists
        with cache_lock(self.preprocessed, "ImageNet file list"):
            if osp.exists(self.preprocessed):
                lists, stale = self.read_preprocessed(listing, classnames)
                if lists is not None:
                    print(f"Loading preprocessed ImageNet file list from {self.preprocessed}")
                    return lists
                print(f"{self.preprocessed} does not match the image folders ({stale}); listing them again "
                      "and replacing it")
            train, test = (self.read_data(classnames, folder) for _, folder in self.LISTS)
            # Checked before it is written: a cached list must be one a run can use.
            check_class_index([("train", train), ("test", test)], self.split_source, root=self.image_dir)
            write_or_keep_in_memory(self.preprocessed,
                                    lambda path: dump_datum_pickle({"train": train, "test": test}, path),
                                    "ImageNet file list")
        return train, test

    def read_preprocessed(self, listing, classnames):
        """((train, test), None) when preprocessed.pkl lists exactly the images in the folders now,
        with their current labels and names; else (None, what differs). A malformed file raises."""
        data = load_datum_lists(self.preprocessed, ("train", "test"))
        lists = []
        for key, folder in self.LISTS:
            files = listing[folder]
            labels = {wnid: label for label, wnid in enumerate(files)}
            names = {wnid: set(images) for wnid, images in files.items()}
            expected = sum(len(images) for images in files.values())
            split_dir = osp.join(self.image_dir, folder)
            items, seen = [], set()
            for item in data[key]:
                parts = item.impath.rsplit(os.sep, 3)
                wnid, name = (parts[-2], parts[-1]) if len(parts) >= 3 and parts[-3] == folder else (None, None)
                if wnid not in names or name not in names[wnid]:
                    return None, f'"{key}" lists {item.impath}, which is not an image in {split_dir}/<wnid>/'
                if item.label != labels[wnid] or item.classname != classnames[wnid]:
                    return None, (f'"{key}" gives {wnid}/{name} label {item.label} "{item.classname}", the folders '
                                  f'and classnames.txt give {labels[wnid]} "{classnames[wnid]}"')
                path = f"{split_dir}{os.sep}{wnid}{os.sep}{name}"
                if path in seen:
                    return None, f'"{key}" lists {path} twice'
                seen.add(path)
                items.append(item if item.impath == path else
                             Datum(impath=path, label=item.label, domain=item.domain, classname=item.classname))
            if len(items) != expected:
                return None, f'"{key}" lists {len(items)} images, {split_dir} holds {expected}'
            lists.append(items)
        return tuple(lists), None

    def read_data(self, classnames, split_dir, text_file=None):
        split_dir = osp.join(self.image_dir, split_dir)
        return read_class_folders(split_dir, name_folders(sorted_subfolders(split_dir), classnames, split_dir,
                                                          text_file or self.text_file))


class ImageNetVariant(DatasetBase):
    """A test-only variant: `<ROOT>/<dataset_dir>/<image_subdir>/<class folder>/<image>`.

    train_x = test = every image. ImageNet's `classnames.txt` is read from the variant's own
    folder (where CoOp's DATASETS.md puts a copy) or else from `<ROOT>/imagenet/`.
    """

    image_subdir = ""
    ignored = ("README.txt",)
    folder_pattern = "<wnid>"  # how a class folder is named, for layout errors

    def __init__(self, cfg):
        self.root = dataset_root(cfg)
        self.dataset_dir = osp.join(self.root, type(self).dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, self.image_subdir)
        candidates = [osp.join(self.dataset_dir, "classnames.txt"), osp.join(self.root, "imagenet", "classnames.txt")]
        text_file = next((p for p in candidates if osp.isfile(p)), None)
        if not osp.isdir(self.image_dir) or text_file is None:
            raise missing_data_error(type(self).__name__, self.root, [self.image_dir, candidates[0]],
                                     note=f"the class list may also be {candidates[1]}", dataset_dir=self.dataset_dir)
        folders = self.class_folders(read_classnames(text_file), text_file)
        if not sorted_subfolders(self.image_dir, self.ignored):
            raise DatasetLayoutError(
                f'{type(self).__name__}: "{self.image_dir}" holds {describe_folder(self.image_dir)} but no class '
                f"folders; expected {self.image_dir}/{self.folder_pattern}/<image>, one folder per class.")
        data = read_class_folders(self.image_dir, folders)
        check_class_index([("test", data)], f'the class folders of "{self.image_dir}"', root=self.image_dir,
                          reference="test")
        super().__init__(train_x=data, test=data)

    def class_folders(self, classnames, text_file):
        """[(folder, class name)] in label order: the sorted wnid folders present."""
        return name_folders(sorted_subfolders(self.image_dir, self.ignored), classnames, self.image_dir, text_file)
