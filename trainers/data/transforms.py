"""`build_transform(cfg, is_train, choices)`: Dassl's transforms by name (`INPUT.TRANSFORMS`).

Train: resize to INPUT.SIZE (unless a random crop sets the size), then the chosen augmentations
in Dassl's order, to-tensor, cutout, normalize, gaussian noise, instance norm.
Test: resize the shorter edge to max(INPUT.SIZE), center-crop INPUT.SIZE, to-tensor, then
normalize / instance norm if chosen. `center_crop` is accepted for old configs and, as in
current Dassl, changes nothing in training (the test transform always center-crops).

Differences from Dassl: `imagenet_policy`, `cifar10_policy`, `svhn_policy` and `randaugment` use
torchvision's AutoAugment / RandAugment (the same published policies, torchvision's code);
`randaugment_fixmatch` and `randaugment2` are not available and raise an error saying so.
"""
import random

import numpy as np
import torch

from ..lazy_import import LazyModule

# torchvision imports torch._dynamo and takes seconds: imported when a transform is built.
T = LazyModule("torchvision.transforms")
F = LazyModule("torchvision.transforms.functional")

__all__ = [
    "AVAI_CHOICES", "INTERPOLATION_MODES", "interpolation_mode", "build_transform", "Random2DTranslation",
    "InstanceNormalization", "Cutout", "GaussianNoise",
]

# Dassl's transform names, in Dassl's order.
AVAI_CHOICES = [
    "random_flip", "random_resized_crop", "normalize", "instance_norm", "random_crop", "random_translation",
    "center_crop", "cutout", "imagenet_policy", "cifar10_policy", "svhn_policy", "randaugment",
    "randaugment_fixmatch", "randaugment2", "gaussian_noise", "colorjitter", "randomgrayscale", "gaussian_blur",
]
UNAVAILABLE = ("randaugment_fixmatch", "randaugment2")

# INPUT.INTERPOLATION: torchvision's InterpolationMode values.
INTERPOLATION_MODES = ("bilinear", "bicubic", "nearest")

# Dassl's AutoAugment names -> torchvision's AutoAugmentPolicy members.
_POLICIES = {
    "imagenet_policy": "IMAGENET",
    "cifar10_policy": "CIFAR10",
    "svhn_policy": "SVHN",
}


def interpolation_mode(name):
    """torchvision's InterpolationMode for an INPUT.INTERPOLATION name ("bilinear", ...)."""
    return T.InterpolationMode(name)


class Random2DTranslation:
    """With probability p: resize to 1.125 x (height, width), then crop (height, width) at a
    random position; otherwise just resize to (height, width)."""

    def __init__(self, height, width, p=0.5, interpolation="bilinear"):
        self.height = height
        self.width = width
        self.p = p
        self.interpolation = interpolation_mode(interpolation) if isinstance(interpolation, str) else interpolation

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return F.resize(img, [self.height, self.width], interpolation=self.interpolation)
        new_width = int(round(self.width * 1.125))
        new_height = int(round(self.height * 1.125))
        resized = F.resize(img, [new_height, new_width], interpolation=self.interpolation)
        x1 = int(round(random.uniform(0, new_width - self.width)))
        y1 = int(round(random.uniform(0, new_height - self.height)))
        return F.crop(resized, top=y1, left=x1, height=self.height, width=self.width)


class InstanceNormalization:
    """Per image and channel: (x - mean) / (std + eps) over the pixels of a (C, H, W) tensor."""

    def __init__(self, eps=1e-8):
        self.eps = eps

    def __call__(self, img):
        flat = img.reshape(img.shape[0], -1)
        mean = flat.mean(1).view(-1, 1, 1)
        std = flat.std(1).view(-1, 1, 1)
        return (img - mean) / (std + self.eps)


class Cutout:
    """Zero `n_holes` squares of side `length` (clipped at the border) at random centres of a
    (C, H, W) tensor."""

    def __init__(self, n_holes=1, length=16):
        self.n_holes = n_holes
        self.length = length

    def __call__(self, img):
        h, w = img.size(1), img.size(2)
        mask = np.ones((h, w), np.float32)
        for _ in range(self.n_holes):
            y, x = np.random.randint(h), np.random.randint(w)
            y1, y2 = np.clip(y - self.length // 2, 0, h), np.clip(y + self.length // 2, 0, h)
            x1, x2 = np.clip(x - self.length // 2, 0, w), np.clip(x + self.length // 2, 0, w)
            mask[y1:y2, x1:x2] = 0.0
        return img * torch.from_numpy(mask).expand_as(img)


class GaussianNoise:
    """With probability p, add N(mean, std^2) noise to every value of a tensor."""

    def __init__(self, mean=0, std=0.15, p=0.5):
        self.mean = mean
        self.std = std
        self.p = p

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return img
        return img + torch.randn(img.size()) * self.std + self.mean


def _check_cfg(cfg, choices):
    for choice in choices:
        if choice not in AVAI_CHOICES:
            raise ValueError(f"Invalid transform choice ({choice!r}) in INPUT.TRANSFORMS; expected names from "
                             f"{AVAI_CHOICES}")
        if choice in UNAVAILABLE:
            raise NotImplementedError(
                f"Dassl's transform {choice!r} is not available in gatescope; use 'randaugment' (torchvision's "
                "RandAugment) or pass your own transform to DataManager(custom_tfm_train=...)"
            )
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise ValueError(f"INPUT.INTERPOLATION must be one of {list(INTERPOLATION_MODES)}, "
                         f"got {cfg.INPUT.INTERPOLATION!r}")
    size = cfg.INPUT.SIZE
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"INPUT.SIZE must be (height, width) of positive ints, got {size!r}")


def build_transform(cfg, is_train=True, choices=None):
    """The train or test transform (a torchvision Compose) for `choices` (default INPUT.TRANSFORMS).

    Returns None when INPUT.NO_TRANSFORM is set. An unknown name raises a ValueError listing
    the valid ones.
    """
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None
    if choices is None:
        choices = cfg.INPUT.TRANSFORMS
    _check_cfg(cfg, choices)
    normalize = T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    if is_train:
        return _build_transform_train(cfg, choices, normalize)
    return _build_transform_test(cfg, choices, normalize)


def _build_transform_train(cfg, choices, normalize):
    print("Building transform_train")
    interp_mode = interpolation_mode(cfg.INPUT.INTERPOLATION)
    input_size = tuple(cfg.INPUT.SIZE)
    tfm = []

    # A random crop produces the target size itself; otherwise resize to it first.
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        print(f"+ resize to {input_size[0]}x{input_size[1]}")
        tfm += [T.Resize(input_size, interpolation=interp_mode)]
    if "random_translation" in choices:
        print("+ random translation")
        tfm += [Random2DTranslation(input_size[0], input_size[1])]
    if "random_crop" in choices:
        print(f"+ random crop (padding = {cfg.INPUT.CROP_PADDING})")
        tfm += [T.RandomCrop(input_size, padding=cfg.INPUT.CROP_PADDING)]
    if "random_resized_crop" in choices:
        scale = tuple(cfg.INPUT.RRCROP_SCALE)
        print(f"+ random resized crop (size={input_size}, scale={scale})")
        tfm += [T.RandomResizedCrop(input_size, scale=scale, interpolation=interp_mode)]
    if "random_flip" in choices:
        print("+ random flip")
        tfm += [T.RandomHorizontalFlip()]
    for name, policy in _POLICIES.items():
        if name in choices:
            print(f"+ {name} (torchvision AutoAugment)")
            tfm += [T.AutoAugment(T.AutoAugmentPolicy[policy])]
    if "randaugment" in choices:
        n, m = cfg.INPUT.RANDAUGMENT_N, cfg.INPUT.RANDAUGMENT_M
        print(f"+ randaugment (n={n}, m={m}; torchvision RandAugment)")
        tfm += [T.RandAugment(num_ops=n, magnitude=m)]
    if "colorjitter" in choices:
        b, c, s, h = (cfg.INPUT.COLORJITTER_B, cfg.INPUT.COLORJITTER_C, cfg.INPUT.COLORJITTER_S,
                      cfg.INPUT.COLORJITTER_H)
        print(f"+ color jitter (brightness={b}, contrast={c}, saturation={s}, hue={h})")
        tfm += [T.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)]
    if "randomgrayscale" in choices:
        print("+ random gray scale")
        tfm += [T.RandomGrayscale(p=cfg.INPUT.RGS_P)]
    if "gaussian_blur" in choices:
        print(f"+ gaussian blur (kernel={cfg.INPUT.GB_K})")
        tfm += [T.RandomApply([T.GaussianBlur(cfg.INPUT.GB_K)], p=cfg.INPUT.GB_P)]

    print("+ to torch tensor of range [0, 1]")
    tfm += [T.ToTensor()]

    if "cutout" in choices:
        print(f"+ cutout (n_holes={cfg.INPUT.CUTOUT_N}, length={cfg.INPUT.CUTOUT_LEN})")
        tfm += [Cutout(cfg.INPUT.CUTOUT_N, cfg.INPUT.CUTOUT_LEN)]
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfm += [normalize]
    if "gaussian_noise" in choices:
        print(f"+ gaussian noise (mean={cfg.INPUT.GN_MEAN}, std={cfg.INPUT.GN_STD})")
        tfm += [GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD)]
    if "instance_norm" in choices:
        print("+ instance normalization")
        tfm += [InstanceNormalization()]
    return T.Compose(tfm)


def _build_transform_test(cfg, choices, normalize):
    print("Building transform_test")
    interp_mode = interpolation_mode(cfg.INPUT.INTERPOLATION)
    input_size = tuple(cfg.INPUT.SIZE)
    print(f"+ resize the smaller edge to {max(input_size)}")
    print(f"+ {input_size[0]}x{input_size[1]} center crop")
    print("+ to torch tensor of range [0, 1]")
    tfm = [T.Resize(max(input_size), interpolation=interp_mode), T.CenterCrop(input_size), T.ToTensor()]
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfm += [normalize]
    if "instance_norm" in choices:
        print("+ instance normalization")
        tfm += [InstanceNormalization()]
    return T.Compose(tfm)
