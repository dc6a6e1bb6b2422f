"""ImageNet: `imagenet/images/{train,val}/<wnid>/*.JPEG`, `imagenet/classnames.txt`.

The file list is cached in `imagenet/preprocessed.pkl` ({"train", "test"}, CoOp's format; read
through the restricted unpickler). The official val set is the test set and, as in CoOp, also
the val set. Few-shot caches hold only "train".

Also `ImageNetVariant`, the base of the test-only variants (ImageNetV2, -Sketch, -A, -R).
"""
import os.path as osp
from collections import OrderedDict

from ..base_dataset import DatasetBase, dataset_root, missing_data_error
from ..datum import Datum
from ..registry import DATASET_REGISTRY
from ..safe_pickle import dump_datum_pickle, load_datum_pickle
from ..splits import listdir_nohidden


def read_classnames(text_file):
    """OrderedDict {folder (wnid): class name} from lines "<wnid> <class name>"."""
    classnames = OrderedDict()
    with open(text_file, "r") as f:
        for line in f:
            fields = line.strip().split(" ")
            if fields[0]:
                classnames[fields[0]] = " ".join(fields[1:])
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


@DATASET_REGISTRY.register()
class ImageNet(DatasetBase):
    dataset_dir = "imagenet"
    read_classnames = staticmethod(read_classnames)  # CoOp's variants call ImageNet.read_classnames

    def __init__(self, cfg):
        self.root = dataset_root(cfg)
        self.dataset_dir = osp.join(self.root, type(self).dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, "images")
        self.preprocessed = osp.join(self.dataset_dir, "preprocessed.pkl")
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")

        if osp.exists(self.preprocessed):
            print(f"Loading preprocessed ImageNet file list from {self.preprocessed}")
            preprocessed = load_datum_pickle(self.preprocessed)
            train, test = preprocessed["train"], preprocessed["test"]
        else:
            text_file = osp.join(self.dataset_dir, "classnames.txt")
            expected = [osp.join(self.image_dir, "train"), osp.join(self.image_dir, "val"), text_file]
            if any(not osp.exists(p) for p in expected):
                raise missing_data_error(type(self).__name__, self.root, expected, dataset_dir=self.dataset_dir,
                                         note=f"or a {self.preprocessed} made by CoOp")
            classnames = read_classnames(text_file)
            train, test = (self.read_data(classnames, split, text_file) for split in ("train", "val"))
            dump_datum_pickle({"train": train, "test": test}, self.preprocessed)

        train, _, test = self.fewshot_and_subsample(cfg, train, None, test, self.split_fewshot_dir)
        super().__init__(train_x=train, val=test, test=test)

    def read_data(self, classnames, split_dir, text_file):
        split_dir = osp.join(self.image_dir, split_dir)
        return read_class_folders(split_dir, name_folders(sorted_subfolders(split_dir), classnames, split_dir,
                                                          text_file))


class ImageNetVariant(DatasetBase):
    """A test-only variant: `<ROOT>/<dataset_dir>/<image_subdir>/<class folder>/<image>`.

    train_x = test = every image. ImageNet's `classnames.txt` is read from the variant's own
    folder (where CoOp's DATASETS.md puts a copy) or else from `<ROOT>/imagenet/`.
    """

    image_subdir = ""
    ignored = ("README.txt",)

    def __init__(self, cfg):
        self.root = dataset_root(cfg)
        self.dataset_dir = osp.join(self.root, type(self).dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, self.image_subdir)
        candidates = [osp.join(self.dataset_dir, "classnames.txt"), osp.join(self.root, "imagenet", "classnames.txt")]
        text_file = next((p for p in candidates if osp.isfile(p)), None)
        if not osp.isdir(self.image_dir) or text_file is None:
            raise missing_data_error(type(self).__name__, self.root, [self.image_dir, candidates[0]],
                                     note=f"the class list may also be {candidates[1]}", dataset_dir=self.dataset_dir)
        data = read_class_folders(self.image_dir, self.class_folders(read_classnames(text_file), text_file))
        super().__init__(train_x=data, test=data)

    def class_folders(self, classnames, text_file):
        """[(folder, class name)] in label order: the sorted wnid folders present."""
        return name_folders(sorted_subfolders(self.image_dir, self.ignored), classnames, self.image_dir, text_file)
