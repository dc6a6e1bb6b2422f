"""`DataManager`, `DatasetWrapper`, `build_data_loader`: Dassl's data plumbing.

Differences from Dassl:
- an unreadable image raises an error naming the file (Dassl retries forever, assuming slow I/O),
  or with DATASET.SKIP_BAD_IMAGES True is skipped, warned about once and counted; images are
  decoded behind one boundary (`image_io.read_image`: any decoder error is a bad image, 16-bit
  images are scaled to 8 bits, not clipped);
- with no transform (INPUT.NO_TRANSFORM), "img" is the resized, un-augmented tensor (Dassl then
  returns no "img" at all, which no trainer can batch);
- an empty split raises an error naming it instead of an assertion.
"""
import warnings

import torch
from tabulate import tabulate
from torch.utils.data import Dataset as TorchDataset

from .image_cache import cached_read_image
from .image_io import BadImageError, read_image
from .registry import build_dataset
from .samplers import build_sampler
from .transforms import T, build_transform, interpolation_mode

__all__ = ["DataManager", "DatasetWrapper", "build_data_loader", "read_image", "BadImageError"]


def build_data_loader(cfg, sampler_type="SequentialSampler", data_source=None, batch_size=64, n_domain=0, n_ins=2,
                      tfm=None, is_train=True, dataset_wrapper=None):
    """A DataLoader over `data_source` (a list of Datum) with the named sampler.

    The last incomplete batch is dropped in training when the data holds at least one batch
    (Dassl's rule), never at test time.
    """
    if not data_source:
        raise ValueError(f"cannot build a {'training' if is_train else 'test'} data loader: the data source is "
                         "empty (check the split file, DATASET.NUM_SHOTS and DATASET.SUBSAMPLE_CLASSES)")
    sampler = build_sampler(sampler_type, cfg=cfg, data_source=data_source, batch_size=batch_size,
                            n_domain=n_domain, n_ins=n_ins)
    if dataset_wrapper is None:
        dataset_wrapper = DatasetWrapper
    return torch.utils.data.DataLoader(
        dataset_wrapper(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=(is_train and len(data_source) >= batch_size),
        pin_memory=(torch.cuda.is_available() and cfg.USE_CUDA),
    )


class DataManager:
    """Builds the dataset named by DATASET.NAME, its transforms and its loaders.

    Attributes: `dataset`, `train_loader_x`, `train_loader_u` (None without unlabelled data),
    `val_loader` (None without val data), `test_loader`.
    """

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        dataset = build_dataset(cfg)

        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            print("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            print("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        train_x = cfg.DATALOADER.TRAIN_X
        self.train_loader_x = build_data_loader(
            cfg, sampler_type=train_x.SAMPLER, data_source=dataset.train_x, batch_size=train_x.BATCH_SIZE,
            n_domain=train_x.N_DOMAIN, n_ins=train_x.N_INS, tfm=tfm_train, is_train=True,
            dataset_wrapper=dataset_wrapper,
        )

        self.train_loader_u = None
        if dataset.train_u:
            train_u = cfg.DATALOADER.TRAIN_X if cfg.DATALOADER.TRAIN_U.SAME_AS_X else cfg.DATALOADER.TRAIN_U
            self.train_loader_u = build_data_loader(
                cfg, sampler_type=train_u.SAMPLER, data_source=dataset.train_u, batch_size=train_u.BATCH_SIZE,
                n_domain=train_u.N_DOMAIN, n_ins=train_u.N_INS, tfm=tfm_train, is_train=True,
                dataset_wrapper=dataset_wrapper,
            )

        test = cfg.DATALOADER.TEST
        self.val_loader = None
        if dataset.val:
            self.val_loader = build_data_loader(
                cfg, sampler_type=test.SAMPLER, data_source=dataset.val, batch_size=test.BATCH_SIZE,
                tfm=tfm_test, is_train=False, dataset_wrapper=dataset_wrapper,
            )
        self.test_loader = build_data_loader(
            cfg, sampler_type=test.SAMPLER, data_source=dataset.test, batch_size=test.BATCH_SIZE,
            tfm=tfm_test, is_train=False, dataset_wrapper=dataset_wrapper,
        )

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset

        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def num_source_domains(self):
        return self._num_source_domains

    @property
    def lab2cname(self):
        return self._lab2cname

    def show_dataset_summary(self, cfg):
        table = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            table.append(["Source", cfg.DATASET.SOURCE_DOMAINS])
        if cfg.DATASET.TARGET_DOMAINS:
            table.append(["Target", cfg.DATASET.TARGET_DOMAINS])
        table.append(["# classes", f"{self.num_classes:,}"])
        table.append(["# train_x", f"{len(self.dataset.train_x):,}"])
        if self.dataset.train_u:
            table.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            table.append(["# val", f"{len(self.dataset.val):,}"])
        table.append(["# test", f"{len(self.dataset.test):,}"])
        print(tabulate(table))


class DatasetWrapper(TorchDataset):
    """Items of a list of Datum as dicts: "img" (transformed tensor; "img2", ... for a list of
    transforms; a list of K tensors with DATALOADER.K_TRANSFORMS = K > 1 in training), "label",
    "domain", "impath", "index", and "img0" (resized, un-augmented) with DATALOADER.RETURN_IMG0.
    """

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform  # a transform, or a list/tuple of transforms
        self.is_train = is_train
        # Augmenting an image K > 1 times is only done in training.
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        if self.k_tfm > 1 and transform is None:
            raise ValueError(f"Cannot augment the image {self.k_tfm} times because transform is None")

        to_tensor = [T.Resize(tuple(cfg.INPUT.SIZE), interpolation=interpolation_mode(cfg.INPUT.INTERPOLATION)),
                     T.ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = T.Compose(to_tensor)
        self.skip_bad_images = bool(cfg.DATASET.get("SKIP_BAD_IMAGES", False))
        self.bad_images = []  # paths skipped (in this process; each worker keeps its own list)

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        idx, img0 = self._read_readable(idx)
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}

        if self.transform is None:
            output["img"] = self.to_tensor(img0)
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                output["img" if i == 0 else f"img{i + 1}"] = self._transform_image(tfm, img0)
        else:
            output["img"] = self._transform_image(self.transform, img0)

        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _read_readable(self, idx):
        """(index, image) of item `idx`; with SKIP_BAD_IMAGES, of the next readable item after it.

        The stand-in keeps batches full and deterministic (the same file always stands in for
        the same bad one); each skipped file is warned about once and listed in `bad_images`.
        """
        for offset in range(len(self.data_source)):
            j = (idx + offset) % len(self.data_source)
            path = self.data_source[j].impath
            try:
                return j, cached_read_image(self, path, read_image)  # decoded/resized once (image_cache.py)
            except BadImageError as e:
                if not self.skip_bad_images:
                    raise BadImageError(path, f"{str(e).split(': ', 1)[-1]}. Replace or delete the file, or set "
                                              "DATASET.SKIP_BAD_IMAGES True to skip unreadable images") from e
                if path not in self.bad_images:
                    self.bad_images.append(path)
                    message = (f"Skipping unreadable image {e.path} (DATASET.SKIP_BAD_IMAGES; "
                               f"{len(self.bad_images)} skipped so far)")
                    print(message)
                    warnings.warn(message, stacklevel=2)
        raise BadImageError(self.data_source[idx].impath, "no image of this split can be read")

    def _transform_image(self, tfm, img0):
        images = [tfm(img0) for _ in range(self.k_tfm)]
        return images[0] if len(images) == 1 else images
