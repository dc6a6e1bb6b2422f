"""The generated demo dataset: deterministic bytes, domains on every Datum, safe generation."""
import json
import os
import os.path as osp
import random

import numpy as np
import pytest
from PIL import Image

from trainers.data import build_dataset
from trainers.data import demo_images
from trainers.data.demo_images import DEMO_CLASSES, DEMO_DOMAINS, generate_demo_dataset
from trainers.engine.config import get_cfg_default

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


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


# ---------------------------------------------------------------- which dataset a demo config runs
def _train_args(*argv):
    from trainers.cli import build_train_parser

    return build_train_parser().parse_args(list(map(str, argv)))


def _demo_config(trainer="CoOp"):
    return osp.join(REPO, "configs", "trainers", trainer, "demo.yaml")


def _tree(folder):
    return sorted(osp.relpath(osp.join(d, n), folder) for d, dirs, files in os.walk(folder) for n in dirs + files)


def test_demo_configs_name_no_dataset():
    import glob

    import yaml

    for path in glob.glob(osp.join(REPO, "configs", "trainers", "*", "demo.yaml")):
        dataset_keys = yaml.safe_load(open(path)).get("DATASET", {})
        assert "NAME" not in dataset_keys and "ROOT" not in dataset_keys, path


def test_without_a_named_dataset_the_demo_runs_from_gatescopes_cache(tmp_path, monkeypatch):
    import trainers

    monkeypatch.setenv("GATESCOPE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    cfg = trainers.setup_cfg(_train_args("--trainer", "CoOp", "--config-file", _demo_config(), "--output-dir", "out"))
    assert (cfg.DATASET.NAME, cfg.DATASET.ROOT) == ("GatescopeDemo", "")
    dataset = build_dataset(cfg)
    assert dataset.train_x[0].impath.startswith(str(tmp_path / "cache" / "datasets" / "gatescope_demo"))
    assert os.listdir(tmp_path / "cwd") == []  # nothing generated where the command ran


def test_a_named_dataset_wins_over_the_demo_config_and_the_users_folder_gets_no_demo(tmp_path):
    import trainers
    from trainers.engine import build_trainer

    root = tmp_path / "my_images"
    for name in ("apple", "pear"):
        for i in range(5):
            os.makedirs(root / name, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * i, 200 if name == "apple" else 20, 90)).save(root / name / f"{i}.png")
    cfg = trainers.setup_cfg(_train_args(
        "--trainer", "CoOp", "--config-file", _demo_config(), "--dataset-config-file",
        osp.join(REPO, "configs", "datasets", "imagefolder.yaml"), "--root", root, "--output-dir", tmp_path / "out",
        "--seed", 1, "OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2))
    trainer = build_trainer(cfg)
    assert cfg.DATASET.NAME == "ImageFolder" and trainer.dm.dataset.classnames == ["apple", "pear"]
    trainer.train()
    assert (tmp_path / "out" / "results.json").is_file()
    # Only what ImageFolder is documented to save: its split and the few-shot sample, no demo data.
    assert sorted(os.listdir(root)) == ["apple", "pear", "split.json", "split_fewshot"]

    with pytest.raises(FileNotFoundError, match=r"DescribableTextures: missing .*dtd"):  # named, so not the demo
        build_dataset(trainers.setup_cfg(_train_args(
            "--config-file", _demo_config(), "--dataset-config-file", osp.join(REPO, "configs", "datasets", "dtd.yaml"),
            "--root", tmp_path / "none")))


def test_a_root_without_a_dataset_is_refused_before_anything_is_written(tmp_path):
    import trainers

    root = tmp_path / "my_images"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "cat" / "0.png")
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="no dataset is named"):
        trainers.setup_cfg(_train_args("--trainer", "CoOp", "--config-file", _demo_config(), "--root", root,
                                       "--output-dir", tmp_path / "out"))
    assert _tree(tmp_path) == before


def test_the_readme_first_command_trains_on_the_demo_dataset_in_the_cache(tmp_path):
    import re
    import shlex
    import subprocess
    import sys

    readme = open(osp.join(REPO, "README.md"), encoding="utf-8").read()
    command = re.search(r"&& (python train\.py [^\n]*)\n", readme).group(1)
    assert command == ("python train.py --trainer CoOp --config-file configs/trainers/CoOp/demo.yaml "
                       "--output-dir output/demo")
    argv = shlex.split(command)[1:]
    argv[argv.index("output/demo")] = str(tmp_path / "demo")  # the same command, writing outside the repository
    cache = os.environ["GATESCOPE_CACHE"]  # the tests' own cache (conftest.py)
    result = subprocess.run([sys.executable, *argv, "OPTIM.MAX_EPOCH", "1"], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Reading split from {osp.join(cache, 'datasets', 'gatescope_demo')}" in result.stdout
    assert "* accuracy" in result.stdout
