"""Decoded (and, where exact, resized) images kept in memory between epochs.

Decoding a JPEG and resizing it is most of the cost of loading a few-shot training image, and
it gives the same pixels every epoch. `DatasetWrapper.__getitem__` reads each image through
`cached_read_image`, which keeps the result in a per-process cache of at most
`DATALOADER.IMAGE_CACHE_MB` MiB (0 turns it off).

What is kept, and why that is exact:
- when every pipeline that receives the image starts with the same `Resize` (the demo and
  CoOp's training transforms, or the plain resize without transform), the image after that
  resize: the pipeline's own `Resize` then sees an image that already has its output size,
  which torchvision computes to the same size and PIL returns as an unchanged copy;
- otherwise the decoded RGB image.
An entry is keyed by path, file size and mtime, so a rewritten file is read again. Callers get
a copy, so a transform that draws into its input cannot alter the cache.

With DATALOADER.NUM_WORKERS > 0 each worker process fills its own copy, which lives as long as
the worker (one epoch, unless the loader keeps persistent workers).
"""
import os

from gates.config_spec import at_least, declare

from .transforms import T  # torchvision.transforms, imported at first use

DEFAULT_IMAGE_CACHE_MB = 1024


def add_image_cache_config(cfg):
    """DATALOADER.IMAGE_CACHE_MB (called once from extend_cfg)."""
    if "IMAGE_CACHE_MB" not in cfg.DATALOADER:
        cfg.DATALOADER.IMAGE_CACHE_MB = DEFAULT_IMAGE_CACHE_MB  # per process; 0 = off
        declare(cfg.DATALOADER, IMAGE_CACHE_MB=at_least(0, "0: off"))
    return cfg


def _first_op(pipeline):
    return pipeline.transforms[0] if isinstance(pipeline, T.Compose) and pipeline.transforms else pipeline


def shared_leading_resize(pipelines):
    """The `Resize` every pipeline starts with, or None when they do not all start with the same one."""
    firsts = [_first_op(p) for p in pipelines]
    if not firsts or not all(isinstance(op, T.Resize) for op in firsts):
        return None
    return firsts[0] if len({repr(op) for op in firsts}) == 1 else None


def pipelines_of(wrapper):
    """Every transform a DatasetWrapper applies to the image it reads."""
    transform = wrapper.transform
    pipelines = list(transform) if isinstance(transform, (list, tuple)) else ([transform] if transform else [])
    if transform is None or wrapper.return_img0:
        pipelines.append(wrapper.to_tensor)
    return pipelines


class ImageCache:
    """path -> image after `resize` (or decoded only), within `budget_bytes`."""

    def __init__(self, budget_bytes, resize=None):
        self.budget_bytes = budget_bytes
        self.resize = resize
        self.used_bytes = 0
        self.entries = {}

    @classmethod
    def for_wrapper(cls, wrapper):
        mb = wrapper.cfg.DATALOADER.get("IMAGE_CACHE_MB", DEFAULT_IMAGE_CACHE_MB)
        return cls(int(mb) * 2 ** 20, shared_leading_resize(pipelines_of(wrapper)))

    def read(self, path, read):
        if self.budget_bytes <= 0:
            return read(path)
        try:
            st = os.stat(path)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            return read(path)  # let the reader report the missing file
        hit = self.entries.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1].copy()
        img = read(path)
        if img is None:
            return img
        if self.resize is not None:
            img = self.resize(img)
        size = img.width * img.height * len(img.getbands())
        if hit is not None:
            self.used_bytes -= hit[2]
            del self.entries[path]
        if self.used_bytes + size <= self.budget_bytes:
            self.entries[path] = (stamp, img, size)
            self.used_bytes += size
            return img.copy()
        return img


def cached_read_image(wrapper, path, read):
    """`read(path)` through the wrapper's image cache (created on first use)."""
    cache = wrapper.__dict__.get("_image_cache")
    if cache is None:
        cache = wrapper._image_cache = ImageCache.for_wrapper(wrapper)
    return cache.read(path, read)
