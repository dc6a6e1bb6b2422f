"""UCF101 (middle frames): `ucf101/UCF-101-midframes/<Action_Name>/*.jpg`, `ucf101/split_zhou_UCF101.json`.

Without the split file it is built from `ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt`
(val = 20% of the training list); "ApplyEyeMakeup" is named "Apply_Eye_Makeup", as in CoOp.
"""
import os.path as osp
import re

from ..datum import Datum
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset
from ..splits import split_trainval


@DATASET_REGISTRY.register()
class UCF101(SplitFileDataset):
    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"

    def split_sources(self):
        list_dir = osp.join(self.dataset_dir, "ucfTrainTestlist")
        return [osp.join(list_dir, name) for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt")]

    def build_split(self):
        class_file, train_file, test_file = self.split_sources()
        cname2lab = {}
        with open(class_file, "r") as f:
            for line in f:
                if line.strip():
                    label, action = line.split()
                    cname2lab[action] = int(label) - 1
        train, val = split_trainval(self.read_data(cname2lab, train_file))
        return train, val, self.read_data(cname2lab, test_file)

    def read_data(self, cname2lab, text_file):
        items = []
        with open(text_file, "r") as f:
            for line in f:
                if not line.strip():
                    continue
                action, filename = line.split()[0].split("/")  # "Action/v_Action_g01_c01.avi [label]"
                renamed_action = "_".join(re.findall("[A-Z][^A-Z]*", action))
                impath = osp.join(self.image_dir, renamed_action, filename.replace(".avi", ".jpg"))
                items.append(Datum(impath=impath, label=cname2lab[action], classname=renamed_action))
        return items
