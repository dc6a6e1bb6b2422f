"""The generated demo dataset: deterministic bytes, domains on every Datum, safe generation."""
import json
import os
import os.path as osp
import random

import numpy as np
import pytest

from trainers.data import build_dataset
from trainers.data import demo_images
from trainers.data.demo_images import DEMO_CLASSES, DEMO_DOMAINS, generate_demo_dataset
from trainers.engine.config import get_cfg_default


def _files(folder):
    out = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = osp.join(dirpath, name)
            out[osp.relpath(path, folder)] = open(path, "rb").read()
    return out


def _cfg(root, num_shots=-1, subsample="all", seed=1):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = "GatescopeDemo"
    cfg.DATASET.NUM_SHOTS = num_shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    return cfg


def test_generation_is_byte_identical_whatever_the_global_seeds(tmp_path):
    random.seed(1)
    np.random.seed(1)
    generate_demo_dataset(str(tmp_path / "a"))
    random.seed(2)
    np.random.seed(2)
    generate_demo_dataset(str(tmp_path / "b"))
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and len([f for f in a if f.endswith(".png")]) == 480
    other_seed = _files(generate_demo_dataset(str(tmp_path / "c"), n_train=1, n_val=1, n_test=1, seed=1))
    assert other_seed["images/circle/train_light_000.png"] != a["images/circle/train_light_000.png"]


def test_sizes_are_parameters_and_other_images_do_not_move(tmp_path):
    small = _files(generate_demo_dataset(str(tmp_path / "small"), n_train=1, n_val=1, n_test=2, image_size=64,
                                         classes=("circle", "star"), domains=("dark", "noise")))
    default = _files(generate_demo_dataset(str(tmp_path / "default")))
    assert len([f for f in small if f.endswith(".png")]) == 2 * 2 * 4
    # one generator per image: more train images leave every test image as it was
    same = _files(generate_demo_dataset(str(tmp_path / "more"), n_train=9))
    assert same["images/star/test_noise_003.png"] == default["images/star/test_noise_003.png"]
    meta = json.loads(small["metadata.json"])
    assert meta["classes"] == ["circle", "star"] and meta["domains"] == ["dark", "noise"]
    with pytest.raises(KeyError, match="available"):
        generate_demo_dataset(str(tmp_path / "bad"), classes=("circle", "blob"))


def test_registered_demo_reads_back_with_domains_through_the_split_file(tmp_path):
    dataset = build_dataset(_cfg(tmp_path))
    folder = tmp_path / "gatescope_demo"
    assert dataset.classnames == list(DEMO_CLASSES) and len(DEMO_CLASSES) >= 10
    assert dataset.domains == list(DEMO_DOMAINS) == ["light", "dark", "noise", "stripes"]
    assert (len(dataset.train_x), len(dataset.val), len(dataset.test)) == (240, 80, 160)
    for split in (dataset.train_x, dataset.val, dataset.test):
        assert {(d.label, d.domain) for d in split} == {(y, k) for y in range(10) for k in range(4)}
    entry = json.loads((folder / "split_gatescope_demo.json").read_text())["test"][0]
    assert entry == ["circle/test_light_000.png", 0, "circle", 0]
    assert json.loads((folder / "metadata.json").read_text())["domains"] == list(DEMO_DOMAINS)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary folder left


def test_domains_survive_fewshot_sampling_and_base_new_subsampling(tmp_path):
    fewshot = build_dataset(_cfg(tmp_path, num_shots=8, subsample="new", seed=2))
    assert fewshot.classnames == list(DEMO_CLASSES[5:]) and len(fewshot.train_x) == 40
    assert {d.domain for d in fewshot.train_x} == {0, 1, 2, 3}
    by_name = {d.impath: d.domain for d in build_dataset(_cfg(tmp_path)).train_x}
    assert all(by_name[d.impath] == d.domain for d in fewshot.train_x)
    reloaded = build_dataset(_cfg(tmp_path, num_shots=8, subsample="new", seed=2))  # from the cache
    assert [(d.impath, d.domain) for d in reloaded.train_x] == [(d.impath, d.domain) for d in fewshot.train_x]


def test_an_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 30:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = demo_images.render_demo_image
    monkeypatch.setattr(demo_images, "render_demo_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_dataset(str(tmp_path / "gatescope_demo"))
    assert os.listdir(tmp_path) == []


def test_a_concurrent_run_that_finishes_first_wins_and_the_loser_cleans_up(tmp_path, monkeypatch):
    target = str(tmp_path / "gatescope_demo")
    real_rename = os.rename

    def other_process_finished_first(src, dst):
        os.makedirs(osp.join(dst, "images"))  # the winner's complete folder is already there
        real_rename(src, dst)  # fails: the target is not empty

    monkeypatch.setattr(demo_images.os, "rename", other_process_finished_first)
    assert generate_demo_dataset(target, n_train=1, n_val=1, n_test=1) == target
    assert os.listdir(tmp_path) == ["gatescope_demo"] and os.listdir(target) == ["images"]
    with pytest.raises(FileExistsError):
        generate_demo_dataset(target)
