"""Oxford Flowers 102: `oxford_flowers/jpg/*.jpg`, `oxford_flowers/split_zhou_OxfordFlowers.json`.

Without the split file it is built from `imagelabels.mat` (needs scipy) and `cat_to_name.json`:
per class 50% train, 20% val, 30% test.
"""
import os.path as osp
from collections import defaultdict

from ..datum import Datum
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset, load_matlab_file
from ..splits import read_json, split_rng


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitFileDataset):
    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"

    def split_sources(self):
        return [osp.join(self.dataset_dir, "imagelabels.mat"), osp.join(self.dataset_dir, "cat_to_name.json")]

    def build_split(self):
        label_file, lab2cname_file = self.split_sources()
        labels = load_matlab_file(label_file, self.split_path)["labels"][0]
        lab2cname = read_json(lab2cname_file)
        tracker = defaultdict(list)  # 1-based label -> image paths, image_00001.jpg is the first
        for i, label in enumerate(labels):
            tracker[int(label)].append(osp.join(self.image_dir, f"image_{i + 1:05d}.jpg"))

        print("Splitting data into 50% train, 20% val, and 30% test")
        rng = split_rng()  # the split depends on the files only, not on the run's seed
        train, val, test = [], [], []
        for label, impaths in tracker.items():
            if str(label) not in lab2cname:
                raise ValueError(f'"{lab2cname_file}" has no name for class {label} (of "{label_file}"); it maps '
                                 '"1".."102" to class names')
            rng.shuffle(impaths)
            n_train, n_val = round(len(impaths) * 0.5), round(len(impaths) * 0.2)
            cname = lab2cname[str(label)]
            for split, paths in ((train, impaths[:n_train]), (val, impaths[n_train:n_train + n_val]),
                                 (test, impaths[n_train + n_val:])):
                split.extend(Datum(impath=p, label=label - 1, classname=cname) for p in paths)
        return train, val, test
