"""UCF101 (middle frames): `ucf101/UCF-101-midframes/<Action_Name>/*.jpg`, `ucf101/split_zhou_UCF101.json`.

Without the split file it is built from `ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt`
(val = 20% of the training list); "ApplyEyeMakeup" is named "Apply_Eye_Makeup", as in CoOp.
"""
import os.path as osp
import re

from ..datum import Datum
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset
from ..splits import line_error, read_lines, split_trainval


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
        for number, line in read_lines(class_file):
            fields = line.split()
            if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) < 1:
                raise line_error(class_file, number, line, "'<class id 1..101> <ActionName>'")
            cname2lab[fields[1]] = int(fields[0]) - 1
        train, val = split_trainval(self.read_data(cname2lab, train_file))
        return train, val, self.read_data(cname2lab, test_file)

    def read_data(self, cname2lab, text_file):
        items = []
        for number, line in read_lines(text_file):
            parts = line.split()[0].split("/")  # "Action/v_Action_g01_c01.avi [label]"
            if len(parts) != 2 or parts[0] not in cname2lab:
                raise line_error(text_file, number, line, "'<ActionName listed in classInd.txt>/<video>.avi [label]'")
            action, filename = parts
            renamed_action = "_".join(re.findall("[A-Z][^A-Z]*", action))
            impath = osp.join(self.image_dir, renamed_action, filename.replace(".avi", ".jpg"))
            items.append(Datum(impath=impath, label=cname2lab[action], classname=renamed_action))
        return items
