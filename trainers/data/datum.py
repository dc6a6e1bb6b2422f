"""`Datum`: one labelled image, with Dassl's constructor, properties and pickled state.

The instance state is exactly Dassl's (`_impath`, `_label`, `_domain`, `_classname` in
`__dict__`), so pickles that Dassl/CoOp wrote (few-shot caches, ImageNet's `preprocessed.pkl`)
unpickle into this class; see `trainers.data.safe_pickle`.
"""
import os.path as osp

__all__ = ["Datum"]


class Datum:
    """Data instance: image path, class label, domain label, class name.

    Args:
        impath (str): image path; the file must exist (checked here, as in Dassl, so a wrong
            split file or DATASET.ROOT fails when the dataset is built, not mid-epoch).
        label (int): class label (0-based).
        domain (int): domain label (0-based; 0 when a dataset has a single domain).
        classname (str): class name, as used in the text prompts.
    """

    def __init__(self, impath="", label=0, domain=0, classname=""):
        if not isinstance(impath, str):
            raise TypeError(f"Datum(impath=...) expects a str path, got {type(impath).__name__}: {impath!r}")
        if not osp.isfile(impath):
            raise FileNotFoundError(f'Datum: image file not found: "{impath}"')
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self):
        return self._impath

    @property
    def label(self):
        return self._label

    @property
    def domain(self):
        return self._domain

    @property
    def classname(self):
        return self._classname

    def __repr__(self):
        return (f"Datum(impath={self._impath!r}, label={self._label!r}, domain={self._domain!r}, "
                f"classname={self._classname!r})")
