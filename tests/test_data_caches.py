"""The caches a dataset derives (split files, few-shot samples, ImageNet's preprocessed.pkl):
checked against what they were derived from, resolved after a move, made once under a lock,
kept in memory on a read-only folder, never running code, and never changing the training."""
import errno
import os
import os.path as osp
import pickle
import random
import shutil
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, build_demo_trainer
from test_data_datasets import WNIDS, make_cfg, write_classnames, write_image, write_wnid_folders
from trainers.data import DatasetBase, build_dataset
from trainers.data.demo_images import ensure_demo_dataset
from trainers.data.derived_cache import cache_lock
from trainers.data.safe_pickle import dump_datum_pickle, dumps_datum_pickle, load_datum_pickle


def image_folder(root, classes, per_class=5):
    for c in classes:
        for i in range(per_class):
            write_image(osp.join(root, c, f"{c}_{i}.png"))
    return str(root)


def keys(items, root):
    return [(osp.relpath(d.impath, root), d.label, d.classname, d.domain) for d in items]


def imagenet_layout(root, n_train=3, n_val=2):
    base = osp.join(root, "imagenet")
    write_classnames(osp.join(base, "classnames.txt"))
    write_wnid_folders(osp.join(base, "images", "train"), WNIDS, n_train)
    write_wnid_folders(osp.join(base, "images", "val"), WNIDS, n_val)
    return base


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


# ---------------------------------------------------------------- stale caches (issue 18, cases 1 and 2)
def test_imagenet_with_a_flat_val_folder_caches_nothing_and_runs_once_the_layout_is_fixed(tmp_path, capsys):
    base = osp.join(tmp_path, "imagenet")
    write_classnames(osp.join(base, "classnames.txt"))
    write_wnid_folders(osp.join(base, "images", "train"), WNIDS, 3)
    flat = [osp.join(base, "images", "val", f"ILSVRC2012_val_{i:08d}.JPEG") for i in range(6)]
    for path in flat:
        write_image(path)
    with pytest.raises(FileNotFoundError, match=r"images/val.*no class folders"):
        build_dataset(make_cfg(tmp_path, "ImageNet"))
    assert not osp.exists(osp.join(base, "preprocessed.pkl"))

    for i, path in enumerate(flat):  # what valprep.sh does: one folder per class
        wnid = WNIDS[i % 3][0]
        os.makedirs(osp.join(base, "images", "val", wnid), exist_ok=True)
        shutil.move(path, osp.join(base, "images", "val", wnid, osp.basename(path)))
    dataset = build_dataset(make_cfg(tmp_path, "ImageNet"))
    assert len(dataset.test) == 6 and {d.label for d in dataset.test} == {0, 1, 2}
    assert osp.isfile(osp.join(base, "preprocessed.pkl"))


def test_a_stale_preprocessed_pkl_is_rebuilt_with_a_notice(tmp_path, capsys):
    base = imagenet_layout(tmp_path)
    preprocessed = osp.join(base, "preprocessed.pkl")
    # What the old code left behind: a file list written before the layout was checked (empty test).
    train = build_dataset(make_cfg(tmp_path, "ImageNet")).train_x
    dump_datum_pickle({"train": train, "test": []}, preprocessed)
    capsys.readouterr()
    dataset = build_dataset(make_cfg(tmp_path, "ImageNet"))
    out = capsys.readouterr().out
    assert "preprocessed.pkl does not match the image folders" in out and "replacing it" in out
    assert len(dataset.test) == 6 and len(load_datum_pickle(preprocessed)["test"]) == 6

    write_image(osp.join(base, "images", "train", WNIDS[1][0], "new.JPEG"))  # the folders change
    assert len(build_dataset(make_cfg(tmp_path, "ImageNet")).train_x) == 10
    assert "does not match the image folders" in capsys.readouterr().out
    build_dataset(make_cfg(tmp_path, "ImageNet"))
    assert "Loading preprocessed ImageNet file list" in capsys.readouterr().out  # current again: reused


def test_a_moved_dataset_folder_keeps_working_with_its_caches(tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    imagenet_layout(old)
    first = build_dataset(make_cfg(old, "ImageNet", num_shots=2))
    shutil.move(str(old), str(new))
    capsys.readouterr()
    moved = build_dataset(make_cfg(new, "ImageNet", num_shots=2))
    out = capsys.readouterr().out
    assert "Loading preprocessed ImageNet file list" in out and "Loading preprocessed few-shot data" in out
    assert keys(moved.train_x, new) == keys(first.train_x, old)
    assert all(d.impath.startswith(str(new)) and osp.isfile(d.impath) for d in moved.train_x + moved.test)


def test_a_coop_fewshot_cache_with_absolute_paths_of_another_machine_loads_after_a_move(tmp_path, capsys):
    root = tmp_path / "data"
    image_folder(root / "pets", ["cat", "dog", "emu"])
    full = build_dataset(make_cfg(root / "pets", "ImageFolder"))
    # CoOp's file: Datum pickled under Dassl's class path, absolute paths of the machine that made it.
    foreign = [type(d)(d.impath, d.label, d.domain, d.classname) for d in full.train_x[::2]]
    for d in foreign:
        d._impath = d.impath.replace(str(root), "/home/someone/datasets")
    val = [type(d)(d.impath, d.label, d.domain, d.classname) for d in full.val]
    for d in val:
        d._impath = d.impath.replace(str(root), "/home/someone/datasets")
    os.makedirs(root / "pets" / "split_fewshot")
    (root / "pets" / "split_fewshot" / "shot_1-seed_1.pkl").write_bytes(
        dumps_datum_pickle({"train": foreign[:3], "val": val[:3]}, protocol=2))
    capsys.readouterr()
    dataset = build_dataset(make_cfg(root / "pets", "ImageFolder", num_shots=1))
    assert "Loading preprocessed few-shot data" in capsys.readouterr().out
    assert keys(dataset.train_x, root) == [(osp.relpath(d.impath, "/home/someone/datasets"), d.label, d.classname, 0)
                                          for d in foreign[:3]]


def test_a_fewshot_cache_of_a_split_that_changed_is_sampled_again_with_a_notice(tmp_path, capsys):
    root = image_folder(tmp_path / "pets", ["cat", "dog"], per_class=10)
    build_dataset(make_cfg(root, "ImageFolder", num_shots=2))
    cache = osp.join(root, "split_fewshot", "shot_2-seed_1.pkl")
    before = load_datum_pickle(cache)["gatescope"]["source"]
    # The split changes (rebuilt after a class was added): every cached item still exists, but
    # the sample drawn from the new split is another one.
    image_folder(root, ["emu"], per_class=10)
    os.remove(osp.join(root, "split.json"))
    capsys.readouterr()
    dataset = build_dataset(make_cfg(root, "ImageFolder", num_shots=2))
    out = capsys.readouterr().out
    assert "is stale (the split it was sampled from has changed since)" in out
    assert dataset.num_classes == 3 and load_datum_pickle(cache)["gatescope"]["source"] != before

    # A cache whose items are not in the split at all (another dataset's file) is stale too.
    other = image_folder(tmp_path / "other", ["cat", "dog"])
    items = build_dataset(make_cfg(other, "ImageFolder")).train_x
    dump_datum_pickle({"train": items, "val": items}, cache)
    capsys.readouterr()
    build_dataset(make_cfg(root, "ImageFolder", num_shots=2))
    assert 'items are not in the dataset\'s current "train" split' in capsys.readouterr().out


def test_a_split_built_from_class_folders_is_checked_against_them(tmp_path, capsys):
    root = image_folder(tmp_path / "textures", ["banded", "blotchy"])
    dtd = osp.join(tmp_path, "dtd")
    shutil.move(root, osp.join(dtd, "images"))
    build_dataset(make_cfg(tmp_path, "DescribableTextures"))
    split = osp.join(dtd, "split_zhou_DescribableTextures.json")
    build_dataset(make_cfg(tmp_path, "DescribableTextures"))  # unchanged folders: read as it is
    os.remove(osp.join(dtd, "images", "banded", "banded_0.png"))
    write_image(osp.join(dtd, "images", "blotchy", "extra.png"))
    with pytest.raises(ValueError, match=r"split_zhou_DescribableTextures.json\" was built by gatescope .*changed: "
                                         r"banded \(5 -> 4 files\), blotchy \(5 -> 6 files\).*Delete it"):
        build_dataset(make_cfg(tmp_path, "DescribableTextures"))
    os.remove(split)
    assert len(build_dataset(make_cfg(tmp_path, "DescribableTextures")).train_x) == 2 + 3  # rebuilt from the folders


# ---------------------------------------------------------------- trust boundary: no code runs from a cache
def test_a_malicious_fewshot_cache_runs_nothing_and_is_named(tmp_path):
    root = image_folder(tmp_path / "pets", ["cat", "dog"])
    build_dataset(make_cfg(root, "ImageFolder"))
    target = tmp_path / "created_by_pickle"
    os.makedirs(osp.join(root, "split_fewshot"))
    with open(osp.join(root, "split_fewshot", "shot_1-seed_1.pkl"), "wb") as f:
        pickle.dump({"train": [_Exploit(str(target))], "val": []}, f)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load .*shot_1-seed_1\.pkl.*mkdir"):
        build_dataset(make_cfg(root, "ImageFolder", num_shots=1))
    assert not target.exists()


def test_a_malicious_preprocessed_pkl_runs_nothing_and_is_named(tmp_path):
    base = imagenet_layout(tmp_path)
    target = tmp_path / "created_by_pickle"
    with open(osp.join(base, "preprocessed.pkl"), "wb") as f:
        pickle.dump({"train": [], "test": [], "x": _Exploit(str(target))}, f)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load .*preprocessed\.pkl.*mkdir"):
        build_dataset(make_cfg(tmp_path, "ImageNet"))
    assert not target.exists()


def test_a_malicious_feature_cache_file_runs_nothing_and_is_rebuilt(demo_root, tmp_path):
    opts = ("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 1, "DATALOADER.FEATURE_CACHE.DIR", str(tmp_path / "fc"))
    first = build_demo_trainer(demo_root, tmp_path / "a", opts=opts)
    first.before_train()
    path = first.feature_cache_path
    target = tmp_path / "created_by_pickle"
    torch.save({"key": None, "features": _Exploit(str(target))}, path)  # torch.save pickles the object as it is
    second = build_demo_trainer(demo_root, tmp_path / "b", opts=opts)
    with pytest.warns(UserWarning, match=r"image-feature cache .* rebuilt: unreadable"):
        second.before_train()
    assert not target.exists()
    assert torch.load(path, weights_only=True)["key"] is not None  # a real cache file again


# ---------------------------------------------------------------- made once, by one process
WAIT_LINE = "Waiting for another process"


def run_two_while_locked(target, code):
    """Start two processes running `code` while this one holds the lock of `target`; release it once
    both wait for it; return their outputs."""
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with cache_lock(target):
        procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outputs = ["", ""]
        deadline = time.time() + 240
        for i, proc in enumerate(procs):
            while WAIT_LINE not in outputs[i]:
                line = proc.stdout.readline()
                assert line and time.time() < deadline, f"never waited for the lock:\n{outputs[i]}"
                outputs[i] += line
    for i, proc in enumerate(procs):
        rest, _ = proc.communicate(timeout=240)
        outputs[i] += rest
        assert proc.returncode == 0, outputs[i]
    return outputs


def test_two_runs_started_together_build_a_split_and_a_fewshot_sample_once(tmp_path):
    root = image_folder(tmp_path / "pets", ["cat", "dog"])
    code = ("from trainers.data import build_dataset; from trainers.engine.config import get_cfg_default\n"
            "cfg = get_cfg_default(); cfg.DATASET.NAME = 'ImageFolder'; cfg.DATASET.NUM_SHOTS = 2; cfg.SEED = 1\n"
            f"cfg.DATASET.ROOT = {root!r}; cfg.DATASET.SUBSAMPLE_CLASSES = 'all'; build_dataset(cfg)")
    outputs = run_two_while_locked(osp.join(root, "split.json"), code)
    joined = "".join(outputs)
    assert joined.count("Saved split to") == 1 and joined.count("Reading split from") == 1
    assert joined.count("Saving preprocessed few-shot data") == 1
    assert joined.count("Loading preprocessed few-shot data") == 1


def test_a_run_that_finds_the_demo_dataset_being_generated_waits_and_reads_it(tmp_path, capsys):
    import threading

    from trainers.data.demo_images import generate_demo_dataset

    folder = str(tmp_path / "gatescope_demo")
    with cache_lock(folder):  # another run is generating it
        waiting = threading.Thread(target=ensure_demo_dataset, args=(folder,), kwargs=dict(n_train=1, n_val=1, n_test=1))
        waiting.start()
        deadline = time.time() + 60
        while WAIT_LINE not in capsys.readouterr().out:
            assert time.time() < deadline and waiting.is_alive(), "the second run did not wait for the lock"
            time.sleep(0.2)
        generate_demo_dataset(folder, n_train=1, n_val=1, n_test=1)
    waiting.join(timeout=60)
    assert "Generating the demo dataset" not in capsys.readouterr().out  # it found the folder made
    assert sorted(os.listdir(tmp_path)) == ["gatescope_demo"]


# ---------------------------------------------------------------- read-only dataset folders (issue 21)
def read_only(monkeypatch, folder):
    """Make writes (files and folders) under `folder` fail as on a read-only file system."""
    folder = osp.join(osp.abspath(folder), "")
    real_open, real_makedirs = os.open, os.makedirs

    def guarded_open(path, *args, **kwargs):
        if osp.abspath(path).startswith(folder) and args and args[0] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, *args, **kwargs)

    def guarded_makedirs(path, *args, **kwargs):
        if osp.abspath(path).startswith(folder) and not osp.isdir(path):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_makedirs(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "makedirs", guarded_makedirs)


def test_a_read_only_dataset_folder_keeps_split_and_fewshot_sample_in_memory(tmp_path, monkeypatch, capsys):
    root = image_folder(tmp_path / "pets", ["cat", "dog"])
    read_only(monkeypatch, root)
    dataset = build_dataset(make_cfg(root, "ImageFolder", num_shots=2))
    out = capsys.readouterr().out
    assert "Note: cannot write the split to" in out and "Note: cannot write the few-shot sample to" in out
    assert "keeping it in memory for this run" in out
    assert len(dataset.train_x) == 4 and sorted(os.listdir(root)) == ["cat", "dog"]
    monkeypatch.undo()
    again = build_dataset(make_cfg(root, "ImageFolder", num_shots=2))  # writable now: the same sample, saved
    assert keys(again.train_x, root) == keys(dataset.train_x, root)
    assert osp.isfile(osp.join(root, "split_fewshot", "shot_2-seed_1.pkl"))


def test_without_a_writable_gatescope_cache_the_caches_are_made_without_a_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("GATESCOPE_CACHE", str(tmp_path / "cache"))  # where the lock files would go
    read_only(monkeypatch, tmp_path / "cache")
    root = image_folder(tmp_path / "pets", ["cat", "dog"])
    build_dataset(make_cfg(root, "ImageFolder", num_shots=2))
    assert osp.isfile(osp.join(root, "split.json")) and osp.isfile(osp.join(root, "split_fewshot", "shot_2-seed_1.pkl"))
    assert not osp.exists(tmp_path / "cache")


# ---------------------------------------------------------------- determinism independent of the caches
def test_sampling_and_split_building_leave_the_global_generator_alone(tmp_path):
    root = image_folder(tmp_path / "pets", ["cat", "dog", "emu"], per_class=10)
    random.seed(7)
    state = random.getstate()
    dataset = build_dataset(make_cfg(root, "ImageFolder", num_shots=3, seed=7))  # builds split and sample
    assert random.getstate() == state
    # The sample is CoOp's draw: Dassl's sampling right after random.seed(SEED).
    full = build_dataset(make_cfg(root, "ImageFolder"))
    random.seed(7)
    assert keys(dataset.train_x, root) == keys(DatasetBase().generate_fewshot_dataset(full.train_x, num_shots=3), root)
    # The split depends on the files only, not on the seed of the run that built it.
    os.remove(osp.join(root, "split.json"))
    random.seed(123)
    rebuilt = build_dataset(make_cfg(root, "ImageFolder", seed=123))
    assert keys(rebuilt.train_x, root) == keys(full.train_x, root)


def fresh_demo_root(demo_root, path):
    """A copy of the demo dataset without any few-shot cache."""
    ensure_demo_dataset(osp.join(demo_root, "gatescope_demo"))
    shutil.copytree(osp.join(demo_root, "gatescope_demo"), osp.join(path, "gatescope_demo"),
                    ignore=shutil.ignore_patterns("split_fewshot*"))
    return str(path)


def test_training_is_the_same_whether_the_fewshot_cache_existed_or_not(demo_root, tmp_path):
    root = fresh_demo_root(demo_root, tmp_path / "data")
    # RandomDomainSampler draws batches from python's global generator, the one CoOp's sampling used.
    opts = ("OPTIM.MAX_EPOCH", 2, "DATASET.NUM_SHOTS", 4, "DATALOADER.TRAIN_X.SAMPLER", "RandomDomainSampler",
            "DATALOADER.TRAIN_X.BATCH_SIZE", 8, "TRAIN.DETERMINISTIC", True, "TEST.NO_TEST", True)
    runs = []
    for name in ("miss", "hit"):
        trainer = build_demo_trainer(root, tmp_path / name, opts=opts)
        trainer.train()
        runs.append(trainer.model.prompt_learner.state_dict())
    assert osp.isfile(osp.join(root, "gatescope_demo", "split_fewshot", "shot_4-seed_1.pkl"))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
