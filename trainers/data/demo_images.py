"""The generated demo dataset: simple shapes (the classes) drawn in four styles (the domains).

`generate_demo_dataset(dataset_dir, ...)` writes, in CoOp's layout,

    <dataset_dir>/images/<classname>/<split>_<domain>_<index>.png   (RGB PNG, image_size^2)
    <dataset_dir>/split_gatescope_demo.json   {"train"|"val"|"test": [[path, label, classname, domain]]}
    <dataset_dir>/metadata.json               class and domain names, sizes, seed

so the dataset is then read by the same split-reading code as a real one. Each image is drawn
from its own generator, seeded by (seed, split, class, domain, index): the output depends on
nothing global (not on the run's seed), and changing the number of images of one split leaves
every other image as it was. Files go to a temporary sibling folder that is renamed into place
when complete, so an interrupted or concurrent run never leaves a half-written dataset.
"""
import json
import os
import os.path as osp
import shutil

import numpy as np
from PIL import Image

from gates.plumbing import remove_stale_temp_files, temp_path_for

__all__ = [
    "DEMO_CLASSES", "DEMO_DOMAINS", "DEMO_SPLIT_FILE", "DEMO_METADATA_FILE", "generate_demo_dataset",
    "ensure_demo_dataset", "render_demo_image",
]

DEMO_SPLIT_FILE = "split_gatescope_demo.json"
DEMO_METADATA_FILE = "metadata.json"
GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")


# Shapes in a unit frame: (u, v) are pixel offsets from the shape's centre, rotated and divided
# by its radius (v points down). Each returns a boolean mask.
def _polar(u, v):
    return np.hypot(u, v), np.arctan2(v, u)


def _half_planes(u, v, n_sides, offset_deg, inradius):
    angles = np.deg2rad(offset_deg + 360.0 / n_sides * np.arange(n_sides))
    return np.all([u * np.cos(a) + v * np.sin(a) <= inradius for a in angles], axis=0)


def _star(u, v):
    rho, theta = _polar(u, v)
    # 5 points at -90 deg + k * 72 deg: the boundary radius peaks where |cos(2.5 (theta + pi/2))| = 1.
    return rho <= 0.42 + 0.58 * np.abs(np.cos(2.5 * (theta + np.pi / 2))) ** 2


def _arrow(u, v):
    shaft = (u >= -0.95) & (u <= 0.15) & (np.abs(v) <= 0.2)
    head = (u >= 0.15) & (u <= 0.95) & (np.abs(v) <= 0.75 * (0.95 - u) / 0.8)
    return shaft | head


SHAPES = {
    "circle": lambda u, v: np.hypot(u, v) <= 0.9,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.75,
    "triangle": lambda u, v: _half_planes(u, v, 3, 90.0, 0.5),
    "star": _star,
    "cross": lambda u, v: ((np.abs(u) <= 0.28) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.28) & (np.abs(u) <= 0.95)),
    "ring": lambda u, v: (np.hypot(u, v) <= 1.0) & (np.hypot(u, v) >= 0.55),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
    "hexagon": lambda u, v: _half_planes(u, v, 6, 0.0, 0.85),
    "crescent": lambda u, v: (np.hypot(u, v) <= 1.0) & (np.hypot(u - 0.5, v) > 0.85),
    "arrow": _arrow,
}


# Domains: a background and a foreground colour that contrasts with it. Each returns
# (background HxWx3 float array, foreground RGB).
def _extreme_colour(rng):
    # Either very dark or very bright, so the shape stands out from mid-range textures.
    return rng.uniform(0, 40, 3) if rng.random() < 0.5 else rng.uniform(215, 255, 3)


def _light(rng, size):
    return np.broadcast_to(rng.uniform(200, 255, 3), (size, size, 3)), rng.uniform(0, 110, 3)


def _dark(rng, size):
    return np.broadcast_to(rng.uniform(0, 45, 3), (size, size, 3)), rng.uniform(150, 255, 3)


def _noise(rng, size):
    return rng.uniform(70, 185, (size, size, 3)), _extreme_colour(rng)


def _stripes(rng, size):
    period = rng.uniform(6, 12)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size]
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
    colours = rng.uniform(70, 185, (2, 3))
    return colours[(np.floor(phase) % 2).astype(int)], _extreme_colour(rng)


BACKGROUNDS = {"light": _light, "dark": _dark, "noise": _noise, "stripes": _stripes}

DEMO_CLASSES = tuple(SHAPES)
DEMO_DOMAINS = tuple(BACKGROUNDS)


def render_demo_image(shape, domain, rng, size=64, style=None):
    """One `size`x`size` RGB uint8 image of `shape` in style `domain`, drawn from generator `rng`.

    The shape's centre is jittered by up to 12% of the size, its radius is 25-36% of the size,
    and it is rotated by up to 15 degrees (so a square never turns into a diamond).
    `style`, when given, colours the image instead of BACKGROUNDS[domain]: a function
    (rng, size) -> (background, foreground) like those of BACKGROUNDS (the controlled
    benchmark's graded domains use it; `domain` is then only a name).
    """
    if shape not in SHAPES:
        raise KeyError(f"unknown demo shape {shape!r}; available: {', '.join(SHAPES)}")
    if style is None and domain not in BACKGROUNDS:
        raise KeyError(f"unknown demo domain {domain!r}; available: {', '.join(BACKGROUNDS)}")
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12, 2) * size
    radius = rng.uniform(0.25, 0.36) * size
    angle = np.deg2rad(rng.uniform(-15, 15))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radius
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radius
    background, foreground = (style or BACKGROUNDS[domain])(rng, size)
    image = np.where(SHAPES[shape](u, v)[..., None], foreground, background)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _write_dataset(target, n_per_split, image_size, classes, domains, seed):
    split = {name: [] for name in SPLITS}
    for label, classname in enumerate(classes):
        class_dir = osp.join(target, "images", classname)
        os.makedirs(class_dir)
        for split_index, split_name in enumerate(SPLITS):
            for domain_index, domain in enumerate(domains):
                for i in range(n_per_split[split_name]):
                    rng = np.random.default_rng([seed, split_index, label, domain_index, i])
                    fname = f"{split_name}_{domain}_{i:03d}.png"
                    image = render_demo_image(classname, domain, rng, image_size)
                    Image.fromarray(image).save(osp.join(class_dir, fname), format="PNG")
                    split[split_name].append([f"{classname}/{fname}", label, classname, domain_index])
    with open(osp.join(target, DEMO_SPLIT_FILE), "w", encoding="utf-8") as f:
        json.dump(split, f, indent=4, separators=(",", ": "))
    metadata = {
        "classes": list(classes),
        "domains": list(domains),
        "images_per_class_per_domain": dict(n_per_split),
        "image_size": image_size,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
    }
    with open(osp.join(target, DEMO_METADATA_FILE), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=4)


def generate_demo_dataset(dataset_dir, n_train=6, n_val=2, n_test=4, image_size=64, classes=DEMO_CLASSES,
                          domains=DEMO_DOMAINS, seed=0):
    """Write the demo dataset to `dataset_dir` (which must not exist yet); returns `dataset_dir`.

    `n_train`, `n_val`, `n_test` are images per class per domain (defaults: 10 classes x 4
    domains -> 240 / 80 / 160 images). `classes` are names from `SHAPES`, labelled in the order
    given; `domains` names from `BACKGROUNDS`, the domain label being the index.
    If another process completes the same folder first, its copy is kept and this one dropped.
    """
    dataset_dir = osp.abspath(dataset_dir)
    for name in classes:
        if name not in SHAPES:
            raise KeyError(f"unknown demo class {name!r}; available: {', '.join(SHAPES)}")
    for name in domains:
        if name not in BACKGROUNDS:
            raise KeyError(f"unknown demo domain {name!r}; available: {', '.join(BACKGROUNDS)}")
    if osp.exists(dataset_dir):
        raise FileExistsError(f'"{dataset_dir}" already exists; generate_demo_dataset writes a new folder')
    parent = osp.dirname(dataset_dir)
    os.makedirs(parent, exist_ok=True)
    # A hidden sibling on the same file system, so the final rename is atomic; the siblings of
    # generations that were killed are removed first.
    remove_stale_temp_files(parent, target=osp.basename(dataset_dir))
    tmp = temp_path_for(dataset_dir, kind="dir")
    os.makedirs(tmp)
    try:
        _write_dataset(tmp, {"train": n_train, "val": n_val, "test": n_test}, image_size, classes, domains,
                       seed)
        try:
            os.rename(tmp, dataset_dir)
        except OSError:
            if not osp.isdir(dataset_dir):
                raise
            # Another process finished first; its folder holds the same images.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dataset_dir


def ensure_demo_dataset(dataset_dir, **kwargs):
    """Generate the demo dataset in `dataset_dir` unless that folder exists; returns `dataset_dir`.

    Under a file lock: runs started together generate it once, the others wait and read it.
    """
    if not osp.isdir(dataset_dir):
        from .derived_cache import cache_lock

        with cache_lock(dataset_dir, "demo dataset"):
            if not osp.isdir(dataset_dir):
                print(f"Generating the demo dataset in {dataset_dir}")
                generate_demo_dataset(dataset_dir, **kwargs)
    return dataset_dir
