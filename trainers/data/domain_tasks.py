"""The controlled benchmark: demo shapes with a ground truth about when a gate can help.

Tasks, written in the demo dataset's layout (`images/<classname>/*.png` plus a split file):

- `homogeneous`: one drawing style ("light"). Every image comes from one domain, so no
  input-dependent prompt can beat the best single prompt.
- `multidomain`: two styles, "light" and "dark", where the label mapping depends on the domain:
  on light backgrounds a shape is labelled by its own name; on dark backgrounds neighbouring
  classes swap names (circle <-> square, triangle <-> pentagon, ...). A single prompt must serve
  two contradicting mappings; a prompt chosen per domain (from the background, which the image
  feature shows plainly) does not. `tests/test_domain_benchmark.py` checks that an oracle given
  the domain, with one prompt per domain, beats a single prompt.
- `graded` (`GradedSpec`): the knobs that decide whether a gate can learn to route, for mapping
  where gating works. `num_domains` domains ("tint0", "tint1", ...) differ only by the tint of a
  mid-grey background: domain d adds strength * TINT_AMPLITUDE * (cos a_d u + sin a_d v) to the
  grey, a_d = 2 pi d / num_domains, u = (1, -1/2, -1/2) and v = (0, sqrt(3)/2, -sqrt(3)/2)
  spanning the colour plane orthogonal to grey. At strength 0 the domains look exactly alike
  (only the oracle, told the domain, can tell them apart); at strength 1 the tints differ by
  more than the grey level varies. The labels depend on the domain by `labels`: "swap"
  (neighbouring classes swap names on odd domains, as in `multidomain`: two mappings), "shift"
  (domain d labels shape s as class (s + d) mod 10: one mapping per domain) or "same" (labels
  ignore the domain: the control where no gate can help). The shapes, their positions and sizes
  are those of `multidomain` (the same seeded generators); only the colours differ.

Images are drawn by `render_demo_image`, each from its own seeded generator (as the demo dataset).
A folder records the GENERATOR_VERSION that wrote it; `ensure_domain_task` writes a folder of
another version again, so a change of the generator never leaves stale images in use.
"""
import json
import math
import os
import os.path as osp
import shutil
import uuid
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from yacs.config import CfgNode as CN

from gates.config_spec import between, declare, one_of

from .demo_images import DEMO_CLASSES, _extreme_colour, render_demo_image

TASKS = {
    "homogeneous": {"domains": ("light",), "n_train": 16, "n_val": 4, "n_test": 16},
    "multidomain": {"domains": ("light", "dark"), "n_train": 8, "n_val": 2, "n_test": 8},
}
GRADED = "graded"
GRADED_SIZES = {"n_train": 8, "n_val": 2, "n_test": 8}  # images per shape, domain and split
LABEL_MAPS = ("swap", "shift", "same")
MAX_DOMAINS = 6  # tints 60 degrees apart at most, so neighbouring domains stay distinct
TINT_AMPLITUDE = 70.0  # the tint's largest channel offset at strength 1 (0-255 scale)
GREY_RANGE = (90.0, 165.0)  # the background's grey level, drawn per image, the same in every domain
SPLIT_FILE = "split_gatescope_domains.json"
METADATA_FILE = "metadata.json"
GENERATOR_VERSION = 2  # 2: the graded task; metadata records its spec
SPLITS = ("train", "val", "test")


def swapped_label(shape_index):
    """The label of a shape on the second domain: classes 0<->1, 2<->3, ... swap names."""
    return shape_index ^ 1


def label_of(shape_index, domain_index):
    return shape_index if domain_index == 0 else swapped_label(shape_index)


@dataclass(frozen=True)
class GradedSpec:
    """One task of the graded family (see the module docstring): how strongly the domains'
    tints differ (`strength`, in [0, 1]), how many domains there are, how labels depend on them."""

    strength: float = 1.0
    num_domains: int = 2
    labels: str = "swap"

    def __post_init__(self):
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"DATASET.DOMAIN_TASK.STRENGTH must lie in [0, 1] (0: domains look alike, "
                             f"1: strongly tinted), got {self.strength}")
        if not 2 <= self.num_domains <= MAX_DOMAINS:
            raise ValueError(f"DATASET.DOMAIN_TASK.NUM_DOMAINS must lie in [2, {MAX_DOMAINS}], got {self.num_domains}")
        if self.labels not in LABEL_MAPS:
            raise ValueError(f"DATASET.DOMAIN_TASK.LABELS must be one of {LABEL_MAPS}, got {self.labels!r}")
        # Two specs that write the same folder must be equal: the folder name rounds to 2 decimals.
        object.__setattr__(self, "strength", round(float(self.strength), 2))

    @classmethod
    def from_cfg(cls, cfg):
        """The spec that cfg.DATASET.DOMAIN_TASK names."""
        node = cfg.DATASET.DOMAIN_TASK
        return cls(strength=float(node.STRENGTH), num_domains=int(node.NUM_DOMAINS), labels=str(node.LABELS))

    @property
    def domains(self):
        return tuple(f"tint{d}" for d in range(self.num_domains))

    @property
    def folder(self):
        """The task's folder name, e.g. "s0.50_n3_shift"."""
        return f"s{self.strength:.2f}_n{self.num_domains}_{self.labels}"

    @property
    def num_mappings(self):
        """How many distinct label mappings the domains use (the prompts an oracle needs at least)."""
        return {"swap": 2, "shift": self.num_domains, "same": 1}[self.labels]

    def label_of(self, shape_index, domain_index):
        if self.labels == "swap":
            return swapped_label(shape_index) if domain_index % 2 else shape_index
        if self.labels == "shift":
            return (shape_index + domain_index) % len(DEMO_CLASSES)
        return shape_index

    def tint(self, domain_index):
        """(3,) RGB offset of domain `domain_index`'s background (0-255 scale)."""
        angle = 2.0 * math.pi * domain_index / self.num_domains
        u = np.array([1.0, -0.5, -0.5])
        v = np.array([0.0, math.sqrt(3) / 2, -math.sqrt(3) / 2])
        return self.strength * TINT_AMPLITUDE * (math.cos(angle) * u + math.sin(angle) * v)

    def style(self, domain_index):
        """The colouring of `render_demo_image` for this domain: a tinted mid-grey background and
        a very dark or very bright shape (the same foreground rule as the demo's textured styles)."""
        tint = self.tint(domain_index)

        def colour(rng, size):
            grey = rng.uniform(*GREY_RANGE)
            background = np.clip(grey + tint, 0.0, 255.0)
            return np.broadcast_to(background, (size, size, 3)), _extreme_colour(rng)
        return colour


def add_domain_task_config(cfg):
    """DATASET.DOMAIN_TASK.{STRENGTH, NUM_DOMAINS, LABELS}: the graded task's knobs."""
    if "DOMAIN_TASK" in cfg.DATASET:
        return cfg
    node = cfg.DATASET.DOMAIN_TASK = CN()
    node.STRENGTH = 1.0  # how different the domains' tints are: 0 (alike) .. 1
    node.NUM_DOMAINS = 2  # 2 .. MAX_DOMAINS tinted domains
    node.LABELS = "swap"  # swap (2 mappings) | shift (one per domain) | same (labels ignore the domain)
    declare(node, STRENGTH=between(0, 1), NUM_DOMAINS=between(2, MAX_DOMAINS), LABELS=one_of("swap", "shift", "same"))
    return cfg


def _task_layout(task, spec):
    """(domain names, sizes, label function, style function or None) of a task."""
    if task == GRADED:
        spec = spec or GradedSpec()
        return spec.domains, GRADED_SIZES, spec.label_of, spec.style
    if task not in TASKS:
        raise KeyError(f"unknown domain task {task!r}; available: {', '.join([*TASKS, GRADED])}")
    if spec is not None:
        raise ValueError(f"task {task!r} has no knobs; a GradedSpec is for the '{GRADED}' task")
    layout = TASKS[task]
    return layout["domains"], layout, label_of, None


def generate_domain_task(dataset_dir, task, image_size=64, seed=0, spec=None):
    """Write task `task` (with `spec`, a GradedSpec, for the graded task) to `dataset_dir`
    (a new folder, renamed into place when complete)."""
    domains, sizes, labeller, style_of = _task_layout(task, spec)
    dataset_dir = osp.abspath(dataset_dir)
    parent = osp.dirname(dataset_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = osp.join(parent, f".{osp.basename(dataset_dir)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        split = {name: [] for name in SPLITS}
        for shape_index, shape in enumerate(DEMO_CLASSES):
            for domain_index, domain in enumerate(domains):
                label = labeller(shape_index, domain_index)
                classname = DEMO_CLASSES[label]
                class_dir = osp.join(tmp, "images", classname)
                os.makedirs(class_dir, exist_ok=True)
                style = style_of(domain_index) if style_of is not None else None
                for split_index, split_name in enumerate(SPLITS):
                    for i in range(sizes[f"n_{split_name}"]):
                        rng = np.random.default_rng([seed, split_index, shape_index, domain_index, i, 7])
                        fname = f"{split_name}_{domain}_{shape}_{i:03d}.png"
                        image = render_demo_image(shape, domain, rng, image_size, style=style)
                        Image.fromarray(image).save(osp.join(class_dir, fname), format="PNG")
                        split[split_name].append([f"{classname}/{fname}", label, classname, domain_index])
        with open(osp.join(tmp, SPLIT_FILE), "w", encoding="utf-8") as f:
            json.dump(split, f, indent=1)
        metadata = {"task": task, "domains": list(domains), "classes": list(DEMO_CLASSES),
                    "image_size": image_size, "seed": seed, "generator_version": GENERATOR_VERSION}
        if task == GRADED:
            metadata["graded"] = asdict(spec or GradedSpec())
            metadata["labels"] = {d: [labeller(s, i) for s in range(len(DEMO_CLASSES))] for i, d in enumerate(domains)}
        else:
            metadata["second_domain_labels"] = "classes 2k and 2k+1 swap names"
        with open(osp.join(tmp, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
        try:
            os.rename(tmp, dataset_dir)
        except OSError:
            if not osp.isdir(dataset_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dataset_dir


def stored_generator_version(dataset_dir):
    """The GENERATOR_VERSION recorded in a task folder's metadata (None when unreadable or absent)."""
    try:
        with open(osp.join(dataset_dir, METADATA_FILE), encoding="utf-8") as f:
            return json.load(f).get("generator_version")
    except (OSError, ValueError, AttributeError):
        return None


def ensure_domain_task(dataset_dir, task, spec=None):
    """Generate the task in `dataset_dir` unless a folder written by this generator version is
    there; a folder of another version (or without readable metadata) is replaced. Under a file
    lock, so concurrent runs generate it once and then read it."""
    from .derived_cache import cache_lock

    if osp.isdir(dataset_dir) and stored_generator_version(dataset_dir) == GENERATOR_VERSION:
        return dataset_dir
    with cache_lock(dataset_dir, f"'{task}' domain task"):
        if osp.isdir(dataset_dir):
            found = stored_generator_version(dataset_dir)
            if found == GENERATOR_VERSION:  # made by the run that held the lock before us
                return dataset_dir
            print(f"The '{task}' domain task in {dataset_dir} was written by generator version {found}, "
                  f"not {GENERATOR_VERSION}: generating it again")
            stale = f"{dataset_dir}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(dataset_dir, stale)  # atomic: readers see the old folder or none
            except OSError:
                pass  # another process moved it first
            shutil.rmtree(stale, ignore_errors=True)
        if not osp.isdir(dataset_dir):
            print(f"Generating the '{task}' domain task in {dataset_dir}")
            generate_domain_task(dataset_dir, task, spec=spec)
    return dataset_dir
