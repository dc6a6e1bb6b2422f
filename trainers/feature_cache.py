"""Frozen image-feature cache for trainers whose prompts never enter the image encoder.

CoOp, CoCoOp and their gated variants read the image only through the frozen CLIP image
encoder, so f(x) = encode_image(transform(x)) is the same every epoch whenever `transform` is
deterministic. The original code recomputes it every step; here it is computed once per
training set and stored on disk, and training batches carry the (B, D) features in "img"
instead of the (B, 3, H, W) images (the models take either; see `image_features_of`).

Two modes (keys `DATALOADER.FEATURE_CACHE.*`):
- exact (VIEWS 0, the default): used only when the training transform is deterministic
  (resize, center crop, to-tensor, normalize, instance norm); otherwise training runs as usual.
- a bank of A augmented views per image (VIEWS A > 0, opt-in): each image is augmented A times
  once, with a seeded RNG; each time an image is drawn in training one of its A views is picked.
  Not the same as fresh augmentations every epoch, hence opt-in.

A cache file is used only if everything that determines its content matches: backbone name,
its image-tower weights (a hash of the tensors, so a retrained checkpoint under the same name
is seen), the backbone dtype, the transform (its description), INPUT.SIZE, the training items
(impath, label, file size and mtime), and for a bank A and the seed. A file that cannot be read,
holds another key, or whose features do not match their stored SHA-256 is rebuilt, never trusted.
Building runs under a forked RNG, so a cached run draws the same batches as an uncached one.
"""
import hashlib
import json
import os
import os.path as osp
import warnings

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset
from yacs.config import CfgNode as CN

from gates.config_spec import at_least, declare, unchecked
from gates.plumbing import fork_rng

from .engine.utils import atomic_write_bytes
from .lazy_import import LazyModule

T = LazyModule("torchvision.transforms")  # imported at first use (lazy_import.py)

FORMAT_VERSION = 1
# Transforms whose output depends only on their input (no RNG): a pipeline made of these
# gives the same tensor every epoch, so its image features can be cached exactly.
DETERMINISTIC_TRANSFORMS = ("Resize", "CenterCrop", "ToTensor", "Normalize", "PILToTensor", "ConvertImageDtype")


def add_feature_cache_config(cfg):
    """DATALOADER.FEATURE_CACHE.{ENABLED, VIEWS, DIR} (called once from extend_cfg)."""
    if "FEATURE_CACHE" in cfg.DATALOADER:
        return cfg
    c = cfg.DATALOADER.FEATURE_CACHE = CN()
    c.ENABLED = True  # use cached frozen image features where that is exact
    c.VIEWS = 0  # A > 0: a stored bank of A augmented views per training image (not exact: opt-in)
    c.DIR = ""  # where cache files live; "" = $GATESCOPE_CACHE/features (~/.cache/gatescope/features)
    declare(c, VIEWS=at_least(0, "0: no bank of augmented views"), DIR=unchecked("created when missing"))
    return cfg


def default_cache_dir():
    from .backbone.demo_weights import cache_dir
    return osp.join(cache_dir(), "features")


# ------------------------------------------------------------------ what the features depend on
def _is_deterministic_op(op):
    from .data.transforms import InstanceNormalization
    return isinstance(op, tuple(getattr(T, name) for name in DETERMINISTIC_TRANSFORMS) + (InstanceNormalization,))


def is_deterministic(transform):
    """True when `transform` (a Compose, one op, or None for the plain resize) uses no RNG."""
    if transform is None:
        return True
    ops = transform.transforms if isinstance(transform, T.Compose) else [transform]
    return all(_is_deterministic_op(op) for op in ops)


def describe_transform(transform):
    """A description of `transform` that is the same in every process (no memory addresses)."""
    if transform is None:
        return None
    if isinstance(transform, (list, tuple)):
        return [describe_transform(t) for t in transform]
    if isinstance(transform, T.Compose):
        return [describe_transform(t) for t in transform.transforms]
    if type(transform).__repr__ is object.__repr__:
        fields = {k: repr(v) for k, v in sorted(vars(transform).items())}
        return f"{type(transform).__module__}.{type(transform).__qualname__}({fields})"
    return repr(transform)


def weights_fingerprint(module):
    """SHA-256 of a module's state dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def items_signature(data_source):
    """SHA-256 of the items: impath, label, and the file's size and mtime (a changed image is seen)."""
    digest = hashlib.sha256()
    for item in data_source:
        try:
            st = os.stat(item.impath)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{item.impath}|{item.label}|{stamp}\n".encode())
    return digest.hexdigest()


def cache_key(backbone_name, weights, dtype, transform, input_size, data_source, views=0, seed=None):
    """The dict that names a cache's content; its SHA-256 names the file."""
    return {
        "format": FORMAT_VERSION,
        "backbone": str(backbone_name),
        "weights": weights,
        "dtype": str(dtype),
        "transform": describe_transform(transform),
        "input_size": list(input_size),
        "items": items_signature(data_source),
        "num_items": len(data_source),
        "views": int(views),
        # The seed decides a bank's augmentations; an exact cache does not depend on it, so
        # runs with different seeds share one file.
        "seed": int(seed) if views else None,
    }


def key_digest(key):
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def features_digest(features):
    return hashlib.sha256(features.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------ the file
def save_features(path, key, features):
    """Write the features with their key and checksum atomically (a crash never leaves half a file)."""
    import io
    buffer = io.BytesIO()
    torch.save({"key": key, "features": features.cpu(), "sha256": features_digest(features)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_features(path, key):
    """The features stored at `path` for `key`, or None (with the reason) when the file is
    missing, unreadable, made for another key, or fails its checksum."""
    if not osp.isfile(path):
        return None, "no cache file yet"
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is rebuilt
        return None, f"unreadable ({type(e).__name__}: {e})"
    if not isinstance(record, dict) or not isinstance(record.get("features"), torch.Tensor):
        return None, "not a feature-cache file"
    if record.get("key") != key:
        return None, "made for other inputs"
    features = record["features"]
    if features.shape[0] != key["num_items"] or features_digest(features) != record.get("sha256"):
        return None, "features do not match their checksum"
    return features, None


# ------------------------------------------------------------------ building
@torch.no_grad()
def compute_features(encode, dataset, batch_size, num_workers, device, views=0, seed=0):
    """(N, D) features of `dataset` items' "img", or (N, A, D) for A augmented views each.

    `encode` maps a (B, 3, H, W) batch to (B, D); the dataset's order is kept (no shuffling).
    """
    passes = max(1, views)
    out = []
    for a in range(passes):
        with fork_rng(seed * 1000003 + a):
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
            out.append(torch.cat([encode(batch["img"].to(device)).float().cpu() for batch in loader]))
    return out[0] if not views else torch.stack(out, dim=1)


# ------------------------------------------------------------------ training with it
class CachedFeatureDataset(Dataset):
    """Training items with the cached (D,) image feature in "img" (one of A views for a bank,
    drawn from its own seeded generator, so the global RNG sees the same draws as without it)."""

    def __init__(self, data_source, features, seed=0):
        if features.shape[0] != len(data_source):
            raise ValueError(f"the feature cache holds {features.shape[0]} items, the training set "
                             f"{len(data_source)}; rebuild it by deleting the file")
        self.data_source = data_source
        self.features = features
        self.generator = torch.Generator().manual_seed(int(seed)) if features.dim() == 3 else None
        self.labels = torch.tensor([item.label for item in data_source])
        self.domains = torch.tensor([item.domain for item in data_source])

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        batch = self.batch([idx])
        return {key: value[0] if key != "index" else idx for key, value in batch.items()}

    def batch(self, indices):
        """The collated batch of `indices` (what default_collate makes of their items), read from
        the stored tensors by one index operation each."""
        index = torch.tensor(indices, dtype=torch.long)
        features = self.features[index]
        if self.generator is not None:
            views = torch.randint(features.shape[1], (len(indices),), generator=self.generator)
            features = features[torch.arange(len(indices)), views]
        return {"img": features, "label": self.labels[index], "domain": self.domains[index],
                "impath": [self.data_source[i].impath for i in indices], "index": index}


class CachedFeatureLoader:
    """The training loader over cached features: the batches a DataLoader with the same sampler,
    batch size and drop_last yields, in the same order, without per-item Python and collation.
    A cached CoOp step on a small backbone is a couple of milliseconds, so the DataLoader's
    per-item work was a tenth of the epoch."""

    num_workers = 0

    def __init__(self, dataset, sampler, batch_size, drop_last):
        self.dataset, self.sampler = dataset, sampler
        self.batch_size, self.drop_last = batch_size, drop_last
        self.batch_sampler = BatchSampler(sampler, batch_size, drop_last)

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        # A DataLoader draws its workers' base seed from the global RNG on every iter(); draw it
        # too, so the RNG stream, and with it training, is the same as with the images.
        torch.empty((), dtype=torch.int64).random_()
        for indices in self.batch_sampler:
            yield self.dataset.batch(indices)


def image_features_of(backbone, image):
    """Frozen image features of a batch: `image` itself when it already is (B, D) cached features,
    else `backbone.encode_image(image)` of (B, 3, H, W) images."""
    if image.dim() == 2:
        return image.to(backbone.dtype)
    return backbone.encode_image(image)


class FeatureCacheMixin:
    """Trainer mixin: before training, swap the training loader for one that serves cached
    features (when DATALOADER.FEATURE_CACHE allows it). Put it before PromptTrainer in the bases;
    the model must read images only through `image_features_of`. A subclass whose prompts enter
    the image encoder sets `FEATURE_CACHE_EXACT = False`."""

    FEATURE_CACHE_EXACT = True

    def before_train(self):
        self.feature_cache_path = None
        loader = self.setup_feature_cache()
        if loader is not None:
            self.train_loader_x = loader
        super().before_train()

    def feature_cache_plan(self):
        """(views, reason): views >= 0 when the cache applies, else None and why not."""
        cfg = self.cfg
        c = cfg.DATALOADER.get("FEATURE_CACHE")
        if c is None or not c.ENABLED:
            return None, "DATALOADER.FEATURE_CACHE.ENABLED is off"
        if not self.FEATURE_CACHE_EXACT:
            return None, f"{type(self).__name__} puts prompts into the image encoder"
        dataset = self.train_loader_x.dataset
        transform = getattr(dataset, "transform", None)
        if isinstance(transform, (list, tuple)):
            return None, "the training set uses a list of transforms"
        if int(c.VIEWS) > 0:
            return int(c.VIEWS), None
        if getattr(dataset, "k_tfm", 1) > 1 or not is_deterministic(transform):
            return None, ("the training transform is random (set DATALOADER.FEATURE_CACHE.VIEWS A "
                          "to train on a stored bank of A augmented views per image)")
        return 0, None

    def setup_feature_cache(self):
        views, why_not = self.feature_cache_plan()
        if views is None:
            print(f"Image-feature cache not used: {why_not}")
            return None
        cfg, old = self.cfg, self.train_loader_x
        dataset = old.dataset
        if views:
            # The bank is built from single augmentations; K_TRANSFORMS views would be lists.
            dataset = type(dataset)(cfg, dataset.data_source, transform=dataset.transform, is_train=False)
        backbone = self.model.backbone
        transform = dataset.transform if dataset.transform is not None else dataset.to_tensor
        key = cache_key(cfg.MODEL.BACKBONE.NAME, weights_fingerprint(backbone.clip.visual), backbone.dtype,
                        transform, cfg.INPUT.SIZE, dataset.data_source, views, cfg.SEED)
        folder = cfg.DATALOADER.FEATURE_CACHE.DIR or default_cache_dir()
        path = osp.join(folder, f"{key_digest(key)}.pt")
        features, reason = load_features(path, key)
        if features is None:
            if reason != "no cache file yet":
                warnings.warn(f"image-feature cache {path} rebuilt: {reason}", stacklevel=2)
            print(f"Building the image-feature cache ({len(dataset)} images"
                  f"{f' x {views} views' if views else ''}): {reason}")
            features = compute_features(backbone.encode_image, dataset, cfg.DATALOADER.TEST.BATCH_SIZE,
                                        cfg.DATALOADER.NUM_WORKERS, self.device, views, cfg.SEED)
            try:
                save_features(path, key, features)
            except OSError as e:
                warnings.warn(f"could not write the image-feature cache {path} ({e}); using it in memory",
                              stacklevel=2)
        print(f"Image-feature cache: {path} ({'exact' if not views else f'{views} stored views per image'})")
        self.feature_cache_path = path
        return CachedFeatureLoader(CachedFeatureDataset(dataset.data_source, features.to(backbone.dtype), cfg.SEED),
                                   old.sampler, old.batch_size, old.drop_last)
