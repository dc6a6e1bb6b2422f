"""FGVC Aircraft: `fgvc_aircraft/images/*.jpg`, `variants.txt`, `images_variant_{train,val,test}.txt`.

The official lists are the split (CoOp keeps no split file for it); labels follow `variants.txt`.
"""
import os.path as osp

from ..base_dataset import DatasetBase, dataset_root, missing_data_error
from ..datum import Datum
from ..registry import DATASET_REGISTRY
from ..splits import read_lines

SPLIT_LISTS = ("images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt")


@DATASET_REGISTRY.register()
class FGVCAircraft(DatasetBase):
    dataset_dir = "fgvc_aircraft"

    def __init__(self, cfg):
        self.root = dataset_root(cfg)
        self.dataset_dir = osp.join(self.root, type(self).dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, "images")
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")
        variants_file = osp.join(self.dataset_dir, "variants.txt")
        expected = [self.image_dir, variants_file] + [osp.join(self.dataset_dir, n) for n in SPLIT_LISTS]
        if any(not osp.exists(p) for p in expected):
            raise missing_data_error(type(self).__name__, self.root, expected, dataset_dir=self.dataset_dir)

        classnames = [line for _, line in read_lines(variants_file)]
        cname2lab = {c: i for i, c in enumerate(classnames)}
        train, val, test = (self.read_data(cname2lab, p) for p in expected[2:])
        source = f"the lists {', '.join(SPLIT_LISTS)} in {self.dataset_dir}"
        train, val, test = self.fewshot_and_subsample(cfg, train, val, test, self.split_fewshot_dir, source=source)
        super().__init__(train_x=train, val=val, test=test)

    def read_data(self, cname2lab, filepath):
        items = []
        for number, line in read_lines(filepath):
            fields = line.split(" ")
            imname, classname = fields[0], " ".join(fields[1:])  # "<image id> <variant name>"
            if classname not in cname2lab:
                raise ValueError(f'"{filepath}", line {number}: variant "{classname}" is not listed in variants.txt')
            items.append(Datum(impath=osp.join(self.image_dir, imname + ".jpg"), label=cname2lab[classname],
                               classname=classname))
        return items
