"""Your own images: DATASET.ROOT holds one sub-folder per class (`<ROOT>/<class_name>/<image>`).

Class names are the folder names with underscores turned into spaces. An optional `split.json`
(CoOp's split format, paths relative to ROOT) at the root is the split; without it one is built
(50% train / 20% val / 30% test per class) and saved there.
"""
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset
from ..splits import listdir_nohidden, read_and_split_data


@DATASET_REGISTRY.register()
class ImageFolder(SplitFileDataset):
    dataset_dir = ""  # DATASET.ROOT itself
    image_subdir = ""
    split_file = "split.json"

    def split_sources(self):
        return []

    def build_split(self):
        folders = listdir_nohidden(self.image_dir)
        return read_and_split_data(self.image_dir, ignored=["split_fewshot"],
                                   new_cnames={f: f.replace("_", " ") for f in folders})
