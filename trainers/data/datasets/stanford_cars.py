"""Stanford Cars: `stanford_cars/{cars_train,cars_test}/*.jpg`, `stanford_cars/split_zhou_StanfordCars.json`.

Split paths are relative to `stanford_cars/` itself. Without the split file it is built from
the devkit's MATLAB annotations (needs scipy); val = 20% of the official train set.
"""
import os.path as osp

from ..datum import Datum
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset, load_matlab_file
from ..splits import split_trainval


@DATASET_REGISTRY.register()
class StanfordCars(SplitFileDataset):
    dataset_dir = "stanford_cars"
    image_subdir = ""
    split_file = "split_zhou_StanfordCars.json"

    def split_sources(self):
        d = self.dataset_dir
        return [osp.join(d, "devkit", "cars_train_annos.mat"), osp.join(d, "cars_test_annos_withlabels.mat"),
                osp.join(d, "devkit", "cars_meta.mat")]

    def build_split(self):
        trainval_file, test_file, meta_file = self.split_sources()
        trainval = self.read_data("cars_train", trainval_file, meta_file)
        test = self.read_data("cars_test", test_file, meta_file)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, image_subdir, anno_file, meta_file):
        annotations = load_matlab_file(anno_file, self.split_path)["annotations"][0]
        class_names = load_matlab_file(meta_file, self.split_path)["class_names"][0]
        items = []
        for anno in annotations:
            label = int(anno["class"][0, 0]) - 1
            # "AM General Hummer SUV 2000" -> "2000 AM General Hummer SUV" (year first, as CoOp)
            names = class_names[label][0].split(" ")
            classname = " ".join([names[-1]] + names[:-1])
            impath = osp.join(self.dataset_dir, image_subdir, anno["fname"][0])
            items.append(Datum(impath=impath, label=label, classname=classname))
        return items
