"""The controlled benchmark: demo shapes with a ground truth about when a gate can help.

Two tasks, written in the demo dataset's layout (`images/<classname>/*.png` plus a split file):

- `homogeneous`: one drawing style ("light"). Every image comes from one domain, so no
  input-dependent prompt can beat the best single prompt.
- `multidomain`: two styles, "light" and "dark", where the label mapping depends on the domain:
  on light backgrounds a shape is labelled by its own name; on dark backgrounds neighbouring
  classes swap names (circle <-> square, triangle <-> pentagon, ...). A single prompt must serve
  two contradicting mappings; a prompt chosen per domain (from the background, which the image
  feature shows plainly) does not. `tests/test_domain_benchmark.py` checks that an oracle given
  the domain, with one prompt per domain, beats a single prompt.

Images are drawn by `render_demo_image`, each from its own seeded generator (as the demo dataset).
"""
import json
import os
import os.path as osp
import shutil
import uuid

import numpy as np
from PIL import Image

from .demo_images import DEMO_CLASSES, render_demo_image

TASKS = {
    "homogeneous": {"domains": ("light",), "n_train": 16, "n_val": 4, "n_test": 16},
    "multidomain": {"domains": ("light", "dark"), "n_train": 8, "n_val": 2, "n_test": 8},
}
SPLIT_FILE = "split_gatescope_domains.json"
GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")


def swapped_label(shape_index):
    """The label of a shape on the second domain: classes 0<->1, 2<->3, ... swap names."""
    return shape_index ^ 1


def label_of(shape_index, domain_index):
    return shape_index if domain_index == 0 else swapped_label(shape_index)


def generate_domain_task(dataset_dir, task, image_size=64, seed=0):
    """Write task `task` to `dataset_dir` (a new folder, renamed into place when complete)."""
    if task not in TASKS:
        raise KeyError(f"unknown domain task {task!r}; available: {', '.join(TASKS)}")
    spec = TASKS[task]
    dataset_dir = osp.abspath(dataset_dir)
    parent = osp.dirname(dataset_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = osp.join(parent, f".{osp.basename(dataset_dir)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        split = {name: [] for name in SPLITS}
        for shape_index, shape in enumerate(DEMO_CLASSES):
            for domain_index, domain in enumerate(spec["domains"]):
                label = label_of(shape_index, domain_index)
                classname = DEMO_CLASSES[label]
                class_dir = osp.join(tmp, "images", classname)
                os.makedirs(class_dir, exist_ok=True)
                for split_index, split_name in enumerate(SPLITS):
                    for i in range(spec[f"n_{split_name}"]):
                        rng = np.random.default_rng([seed, split_index, shape_index, domain_index, i, 7])
                        fname = f"{split_name}_{domain}_{shape}_{i:03d}.png"
                        image = render_demo_image(shape, domain, rng, image_size)
                        Image.fromarray(image).save(osp.join(class_dir, fname), format="PNG")
                        split[split_name].append([f"{classname}/{fname}", label, classname, domain_index])
        with open(osp.join(tmp, SPLIT_FILE), "w", encoding="utf-8") as f:
            json.dump(split, f, indent=1)
        with open(osp.join(tmp, "metadata.json"), "w", encoding="utf-8") as f:
            json.dump({"task": task, "domains": list(spec["domains"]), "classes": list(DEMO_CLASSES),
                       "second_domain_labels": "classes 2k and 2k+1 swap names", "image_size": image_size,
                       "seed": seed, "generator_version": GENERATOR_VERSION}, f, indent=2)
        try:
            os.rename(tmp, dataset_dir)
        except OSError:
            if not osp.isdir(dataset_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dataset_dir


def ensure_domain_task(dataset_dir, task):
    if not osp.isdir(dataset_dir):
        from .derived_cache import cache_lock

        with cache_lock(dataset_dir, f"'{task}' domain task"):  # generated once by concurrent runs
            if not osp.isdir(dataset_dir):
                print(f"Generating the '{task}' domain task in {dataset_dir}")
                generate_domain_task(dataset_dir, task)
    return dataset_dir
