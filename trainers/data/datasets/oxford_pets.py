"""Oxford-IIIT Pets: `oxford_pets/images/*.jpg`, `oxford_pets/split_zhou_OxfordPets.json`.

Without the split file it is built from `annotations/{trainval,test}.txt` (val = 20% of trainval).
"""
import os.path as osp

from ..datum import Datum
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset
from ..splits import line_error, read_lines, read_split, save_split, split_trainval, subsample_classes


@DATASET_REGISTRY.register()
class OxfordPets(SplitFileDataset):
    dataset_dir = "oxford_pets"
    image_subdir = "images"
    split_file = "split_zhou_OxfordPets.json"

    # CoOp's other datasets (and code ported from CoOp) call these helpers on OxfordPets.
    read_split = staticmethod(read_split)
    save_split = staticmethod(save_split)
    split_trainval = staticmethod(split_trainval)
    subsample_classes = staticmethod(subsample_classes)

    def split_sources(self):
        anno_dir = osp.join(self.dataset_dir, "annotations")
        return [osp.join(anno_dir, "trainval.txt"), osp.join(anno_dir, "test.txt")]

    def build_split(self):
        train, val = split_trainval(self.read_data("trainval.txt"))
        return train, val, self.read_data("test.txt")

    def read_data(self, split_file):
        # Lines of annotations/<split_file>: "<Breed_Name>_<n> <class id 1..37> <species> <breed id>";
        # the breed is the name without its trailing number, lower-cased.
        items = []
        path = osp.join(self.dataset_dir, "annotations", split_file)
        for number, line in read_lines(path):
            if line.startswith("#"):  # the official test.txt has no comments, but trainval.txt may
                continue
            fields = line.split()
            if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) < 1 or "_" not in fields[0]:
                raise line_error(path, number, line, "'<Breed_Name>_<n> <class id 1..37> <species> <breed id>'")
            imname, label = fields[:2]
            breed = "_".join(imname.split("_")[:-1]).lower()
            impath = osp.join(self.image_dir, imname + ".jpg")
            items.append(Datum(impath=impath, label=int(label) - 1, classname=breed))
        return items
