"""Your own images: DATASET.ROOT holds one sub-folder per class (`<ROOT>/<class_name>/<image>`).

Class names are the folder names with underscores turned into spaces. An optional `split.json`
(CoOp's split format, paths relative to ROOT) at the root is the split; without it one is built
(50% train / 20% val / 30% test per class) and saved there, with the folders' file counts, so
that a split made before images were added or removed is recognised as stale.
"""
from ..registry import DATASET_REGISTRY
from ..split_dataset import SplitFileDataset
from ..splits import listdir_nohidden


@DATASET_REGISTRY.register()
class ImageFolder(SplitFileDataset):
    dataset_dir = ""  # DATASET.ROOT itself
    image_subdir = ""
    split_file = "split.json"
    split_from_class_folders = True
    ignored_folders = ("split_fewshot",)

    def classnames_of_folders(self):
        return {f: f.replace("_", " ") for f in listdir_nohidden(self.image_dir)}
