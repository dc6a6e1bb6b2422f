"""SUN397: `sun397/SUN397/<letter>/<class>[/<sub>]/*.jpg`, `sun397/split_zhou_SUN397.json`.

Without the split file it is built from `ClassName.txt`, `Training_01.txt` and `Testing_01.txt`
(val = 20% of the training list). "/a/apartment_building/outdoor" is named
"outdoor apartment_building", as in CoOp.
"""
import os.path as osp

from ..datum import Datum
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset
from ..splits import line_error, read_lines, split_trainval


@DATASET_REGISTRY.register()
class SUN397(SplitFileDataset):
    dataset_dir = "sun397"
    image_subdir = "SUN397"
    split_file = "split_zhou_SUN397.json"

    def split_sources(self):
        return [osp.join(self.dataset_dir, name) for name in ("ClassName.txt", "Training_01.txt", "Testing_01.txt")]

    def build_split(self):
        classname_file, train_file, test_file = self.split_sources()
        folders = [line[1:] for _, line in read_lines(classname_file)]  # "/a/abbey" -> "a/abbey"
        cname2lab = {c: i for i, c in enumerate(folders)}
        train, val = split_trainval(self.read_data(cname2lab, train_file))
        return train, val, self.read_data(cname2lab, test_file)

    def read_data(self, cname2lab, text_file):
        items = []
        for number, line in read_lines(text_file):
            imname = line[1:]  # "/a/abbey/sun_x.jpg" -> "a/abbey/sun_x.jpg"
            folder = osp.dirname(imname)
            if folder not in cname2lab:
                raise line_error(text_file, number, line,
                                 "'/<letter>/<class folder listed in ClassName.txt>/<image>'")
            classname = " ".join(folder.split("/")[1:][::-1])  # drop the letter, qualifier first
            items.append(Datum(impath=osp.join(self.image_dir, imname), label=cname2lab[folder],
                               classname=classname))
        return items
