"""Every dataset reader on a tiny folder in its real (CoOp) layout, split building, and layout errors.

Each layout helper writes a few 4x4 images plus the real split or annotation files, with 2-3
classes, under a temporary DATASET.ROOT.
"""
import glob
import json
import os
import os.path as osp
import random

import pytest
import yaml
from PIL import Image

from trainers.data import DATASET_REGISTRY, build_dataset
from trainers.data.registry import mirror_registry
from trainers.data.safe_pickle import load_datum_pickle
from trainers.engine.config import get_cfg_default
from trainers.engine.registry import Registry

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ---------------------------------------------------------------- layout helpers
def write_image(path):
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.new("RGB", (4, 4), (200, 100, 50)).save(path)  # format from the extension (.jpg -> JPEG)


def write_lines(path, lines):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_split_layout(root, dataset_dir, image_subdir, split_file, classes, counts=(3, 2, 2)):
    """Images `<root>/<dataset_dir>/<image_subdir>/<pattern>` and CoOp's split file for them.

    `classes` is [(classname, relative path pattern with {i})]; `counts` images per class for
    train, val, test.
    """
    image_dir = osp.join(root, dataset_dir, image_subdir)
    split, k = {}, 0
    for split_name, n in zip(("train", "val", "test"), counts):
        entries = []
        for label, (classname, pattern) in enumerate(classes):
            for _ in range(n):
                rel = pattern.format(i=k)
                k += 1
                write_image(osp.join(image_dir, rel))
                entries.append([rel, label, classname])
        split[split_name] = entries
    with open(osp.join(root, dataset_dir, split_file), "w") as f:
        json.dump(split, f)
    return image_dir


# name: (dataset folder, image folder, split file, [(classname, relative path pattern)])
SPLIT_FILE_LAYOUTS = {
    "OxfordPets": ("oxford_pets", "images", "split_zhou_OxfordPets.json", [
        ("abyssinian", "Abyssinian_{i}.jpg"), ("american_bulldog", "american_bulldog_{i}.jpg"),
        ("pug", "pug_{i}.jpg")]),
    "Caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", [
        ("accordion", "accordion/image_{i:04d}.jpg"), ("airplane", "airplanes/image_{i:04d}.jpg"),
        ("face", "Faces/image_{i:04d}.jpg")]),
    "StanfordCars": ("stanford_cars", "", "split_zhou_StanfordCars.json", [
        ("2012 Audi S4 Sedan", "cars_train/{i:05d}.jpg"),
        ("2000 AM General Hummer SUV", "cars_test/{i:05d}.jpg")]),
    "OxfordFlowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", [
        ("pink primrose", "image_{i:05d}.jpg"), ("hard-leaved pocket orchid", "image_1{i:04d}.jpg")]),
    "Food101": ("food-101", "images", "split_zhou_Food101.json", [
        ("apple_pie", "apple_pie/{i}.jpg"), ("baby_back_ribs", "baby_back_ribs/{i}.jpg")]),
    "SUN397": ("sun397", "SUN397", "split_zhou_SUN397.json", [
        ("abbey", "a/abbey/sun_{i}.jpg"),
        ("outdoor apartment_building", "a/apartment_building/outdoor/sun_{i}.jpg")]),
    "DescribableTextures": ("dtd", "images", "split_zhou_DescribableTextures.json", [
        ("banded", "banded/banded_{i:04d}.jpg"), ("blotchy", "blotchy/blotchy_{i:04d}.jpg")]),
    "EuroSAT": ("eurosat", "2750", "split_zhou_EuroSAT.json", [
        ("Annual Crop Land", "AnnualCrop/AnnualCrop_{i}.jpg"), ("Forest", "Forest/Forest_{i}.jpg")]),
    "UCF101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", [
        ("Apply_Eye_Makeup", "Apply_Eye_Makeup/v_ApplyEyeMakeup_g{i:02d}_c01.jpg"),
        ("Band_Marching", "Band_Marching/v_BandMarching_g{i:02d}_c01.jpg")]),
}

WNIDS = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark")]


def write_classnames(path, wnids=WNIDS):
    write_lines(path, [f"{wnid} {name}" for wnid, name in wnids])


def write_wnid_folders(image_dir, wnids, n, ext="JPEG"):
    for wnid, _ in wnids:
        for i in range(n):
            write_image(osp.join(image_dir, wnid, f"{wnid}_{i}.{ext}"))


def make_cfg(root, name, num_shots=-1, seed=1, subsample="all"):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = num_shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    return cfg


def split_sizes(dataset):
    return tuple(len(s) if s is not None else None for s in (dataset.train_x, dataset.val, dataset.test))


# ---------------------------------------------------------------- readers with a split file
@pytest.mark.parametrize("name", sorted(SPLIT_FILE_LAYOUTS))
def test_split_file_datasets_read_coops_layout(tmp_path, name):
    dataset_dir, image_subdir, split_file, classes = SPLIT_FILE_LAYOUTS[name]
    image_dir = write_split_layout(tmp_path, dataset_dir, image_subdir, split_file, classes)
    dataset = build_dataset(make_cfg(tmp_path, name))
    n = len(classes)
    assert dataset.classnames == [c for c, _ in classes]
    assert split_sizes(dataset) == (3 * n, 2 * n, 2 * n)
    assert all(d.impath.startswith(osp.join(image_dir, "")) and osp.isfile(d.impath) for d in dataset.test)

    # few-shot + base/new through the shared code path, cached where CoOp caches it
    fewshot = build_dataset(make_cfg(tmp_path, name, num_shots=2, seed=3, subsample="new"))
    assert osp.isfile(osp.join(tmp_path, dataset_dir, "split_fewshot", "shot_2-seed_3.pkl"))
    new = [c for c, _ in classes][(n + 1) // 2:]
    assert fewshot.classnames == new and len(fewshot.train_x) == 2 * len(new) and len(fewshot.val) == 2 * len(new)


# Generated on first use (the demo and the controlled benchmark's tasks), or built from any folder.
GENERATED = {"GatescopeDemo", "GatescopeHomogeneous", "GatescopeMultiDomain", "GatescopeGraded", "ImageFolder"}


@pytest.mark.parametrize("name", sorted(set(DATASET_REGISTRY.registered_names()) - GENERATED))
def test_missing_dataset_folder_names_the_expected_paths(tmp_path, name):
    with pytest.raises(FileNotFoundError) as info:
        build_dataset(make_cfg(tmp_path, name))
    message = str(info.value)
    dataset_dir = DATASET_REGISTRY.get(name).dataset_dir
    assert osp.join(str(tmp_path), dataset_dir) in message and "DATASETS.md" in message
    if name in SPLIT_FILE_LAYOUTS:
        assert SPLIT_FILE_LAYOUTS[name][2] in message


def test_missing_split_file_of_a_dataset_that_cannot_rebuild_it_names_it(tmp_path):
    write_image(osp.join(tmp_path, "oxford_pets", "images", "Abyssinian_1.jpg"))
    with pytest.raises(FileNotFoundError) as info:
        build_dataset(make_cfg(tmp_path, "OxfordPets"))
    message = str(info.value)
    assert osp.join(str(tmp_path), "oxford_pets", "split_zhou_OxfordPets.json") in message
    assert osp.join("annotations", "trainval.txt") in message


# ---------------------------------------------------------------- splits built when absent
def test_dtd_builds_and_saves_its_split_when_absent(tmp_path, capsys):
    for texture in ("banded", "blotchy", "braided"):
        for i in range(5):
            write_image(osp.join(tmp_path, "dtd", "images", texture, f"{texture}_{i:04d}.jpg"))
    random.seed(1)
    dataset = build_dataset(make_cfg(tmp_path, "DescribableTextures"))
    split_path = osp.join(tmp_path, "dtd", "split_zhou_DescribableTextures.json")
    saved = json.load(open(split_path))
    assert split_sizes(dataset) == (6, 3, 6)  # per class: round(2.5) = 2 train, round(1.0) = 1 val, 2 test
    assert saved["val"][0][1:] == [0, "banded"] and saved["val"][0][0].startswith("banded/")
    capsys.readouterr()
    again = build_dataset(make_cfg(tmp_path, "DescribableTextures"))
    assert "Reading split from" in capsys.readouterr().out
    assert [d.impath for d in again.train_x] == [d.impath for d in dataset.train_x]


def test_eurosat_builds_its_split_with_coops_class_names(tmp_path):
    for folder in ("AnnualCrop", "HerbaceousVegetation", "SeaLake"):
        for i in range(4):
            write_image(osp.join(tmp_path, "eurosat", "2750", folder, f"{folder}_{i}.jpg"))
    dataset = build_dataset(make_cfg(tmp_path, "EuroSAT"))
    assert dataset.classnames == ["Annual Crop Land", "Herbaceous Vegetation Land", "Sea or Lake"]
    saved = json.load(open(osp.join(tmp_path, "eurosat", "split_zhou_EuroSAT.json")))
    assert {tuple(e[1:]) for e in saved["test"]} == {(0, "Annual Crop Land"), (1, "Herbaceous Vegetation Land"),
                                                     (2, "Sea or Lake")}


def test_caltech101_builds_its_split_without_background_classes(tmp_path):
    for folder in ("BACKGROUND_Google", "Faces", "Faces_easy", "airplanes"):
        for i in range(4):
            write_image(osp.join(tmp_path, "caltech-101", "101_ObjectCategories", folder, f"image_{i:04d}.jpg"))
    dataset = build_dataset(make_cfg(tmp_path, "Caltech101"))
    assert dataset.classnames == ["face", "airplane"]  # sorted folders: Faces < airplanes
    assert osp.isfile(osp.join(tmp_path, "caltech-101", "split_zhou_Caltech101.json"))


def test_oxford_pets_builds_its_split_from_the_annotations(tmp_path):
    lines = {"trainval.txt": [], "test.txt": []}
    for label, breed in enumerate(("Abyssinian", "american_bulldog"), start=1):
        for i in range(7):
            name = f"{breed}_{i}"
            write_image(osp.join(tmp_path, "oxford_pets", "images", name + ".jpg"))
            lines["trainval.txt" if i < 5 else "test.txt"].append(f"{name} {label} 1 {label}")
    for fname, content in lines.items():
        write_lines(osp.join(tmp_path, "oxford_pets", "annotations", fname), content)
    dataset = build_dataset(make_cfg(tmp_path, "OxfordPets"))
    assert dataset.classnames == ["abyssinian", "american_bulldog"]
    assert split_sizes(dataset) == (8, 2, 4)
    assert osp.isfile(osp.join(tmp_path, "oxford_pets", "split_zhou_OxfordPets.json"))


def test_sun397_builds_its_split_from_the_official_lists(tmp_path):
    base = osp.join(tmp_path, "sun397")
    folders = ["/a/abbey", "/a/apartment_building/outdoor"]
    write_lines(osp.join(base, "ClassName.txt"), folders)
    train, test = [], []
    for folder in folders:
        for i in range(6):
            rel = f"{folder}/sun_{i}.jpg"
            write_image(osp.join(base, "SUN397", rel[1:]))
            (train if i < 4 else test).append(rel)
    write_lines(osp.join(base, "Training_01.txt"), train)
    write_lines(osp.join(base, "Testing_01.txt"), test)
    dataset = build_dataset(make_cfg(tmp_path, "SUN397"))
    assert dataset.classnames == ["abbey", "outdoor apartment_building"]
    assert split_sizes(dataset) == (6, 2, 4)


def test_ucf101_builds_its_split_from_the_official_lists(tmp_path):
    base = osp.join(tmp_path, "ucf101")
    write_lines(osp.join(base, "ucfTrainTestlist", "classInd.txt"), ["1 ApplyEyeMakeup", "2 BandMarching"])
    train, test = [], []
    for label, (action, folder) in enumerate((("ApplyEyeMakeup", "Apply_Eye_Makeup"),
                                              ("BandMarching", "Band_Marching")), start=1):
        for g in range(1, 7):
            video = f"v_{action}_g{g:02d}_c01"
            write_image(osp.join(base, "UCF-101-midframes", folder, video + ".jpg"))
            if g <= 4:
                train.append(f"{action}/{video}.avi {label}")
            else:
                test.append(f"{action}/{video}.avi")
    write_lines(osp.join(base, "ucfTrainTestlist", "trainlist01.txt"), train)
    write_lines(osp.join(base, "ucfTrainTestlist", "testlist01.txt"), test)
    dataset = build_dataset(make_cfg(tmp_path, "UCF101"))
    assert dataset.classnames == ["Apply_Eye_Makeup", "Band_Marching"]
    assert split_sizes(dataset) == (6, 2, 4)


@pytest.mark.parametrize("name,folder,mat", [("OxfordFlowers", "oxford_flowers", "imagelabels.mat"),
                                             ("StanfordCars", "stanford_cars", "cars_meta.mat")])
def test_matlab_based_splits_name_their_inputs_or_scipy(tmp_path, name, folder, mat):
    os.makedirs(osp.join(tmp_path, folder, "jpg"))
    with pytest.raises(FileNotFoundError, match=mat):
        build_dataset(make_cfg(tmp_path, name))


def test_oxford_flowers_without_scipy_says_to_install_it_or_download_the_split(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError("No module named 'scipy'")
        return real_import(name, *args, **kwargs)

    base = osp.join(tmp_path, "oxford_flowers")
    write_image(osp.join(base, "jpg", "image_00001.jpg"))
    for fname in ("imagelabels.mat", "cat_to_name.json"):
        write_lines(osp.join(base, fname), ["{}"])
    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(ImportError, match=r"pip install scipy.*split_zhou_OxfordFlowers\.json"):
        build_dataset(make_cfg(tmp_path, "OxfordFlowers"))


# ---------------------------------------------------------------- datasets without split files
def test_fgvc_aircraft_reads_the_official_variant_lists(tmp_path):
    base = osp.join(tmp_path, "fgvc_aircraft")
    variants = ["707-320", "A300B4", "F-16A/B"]
    write_lines(osp.join(base, "variants.txt"), variants)
    image_id = 1000000
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        lines = []
        for variant in variants:
            for _ in range(n):
                write_image(osp.join(base, "images", f"{image_id}.jpg"))
                lines.append(f"{image_id} {variant}")
                image_id += 1
        write_lines(osp.join(base, f"images_variant_{split}.txt"), lines)
    dataset = build_dataset(make_cfg(tmp_path, "FGVCAircraft"))
    assert dataset.classnames == variants and split_sizes(dataset) == (9, 6, 6)
    base_half = build_dataset(make_cfg(tmp_path, "FGVCAircraft", num_shots=1, subsample="base"))
    assert base_half.classnames == variants[:2] and len(base_half.train_x) == 2


def test_imagenet_writes_and_reuses_preprocessed_pkl_in_coops_format(tmp_path, capsys):
    base = osp.join(tmp_path, "imagenet")
    write_classnames(osp.join(base, "classnames.txt"))
    write_wnid_folders(osp.join(base, "images", "train"), WNIDS, 3)
    write_wnid_folders(osp.join(base, "images", "val"), WNIDS, 2)
    dataset = build_dataset(make_cfg(tmp_path, "ImageNet"))
    assert dataset.classnames == ["tench", "goldfish", "great white shark"]
    assert split_sizes(dataset) == (9, 6, 6) and dataset.val is dataset.test
    preprocessed = osp.join(base, "preprocessed.pkl")
    assert b"dassl.data.datasets.base_dataset" in open(preprocessed, "rb").read()
    assert set(load_datum_pickle(preprocessed)) == {"train", "test"}

    capsys.readouterr()
    fewshot = build_dataset(make_cfg(tmp_path, "ImageNet", num_shots=2))
    assert "Loading preprocessed ImageNet file list" in capsys.readouterr().out
    assert len(fewshot.train_x) == 6 and len(fewshot.test) == 6
    assert set(load_datum_pickle(osp.join(base, "split_fewshot", "shot_2-seed_1.pkl"))) == {"train", "gatescope"}


def test_imagenetv2_uses_numbered_folders_and_imagenets_classnames(tmp_path):
    write_classnames(osp.join(tmp_path, "imagenet", "classnames.txt"))
    for label in range(3):
        for i in range(2):
            write_image(osp.join(tmp_path, "imagenetv2", "imagenetv2-matched-frequency-format-val", str(label),
                                 f"{i}.jpeg"))
    dataset = build_dataset(make_cfg(tmp_path, "ImageNetV2"))
    assert dataset.classnames == ["tench", "goldfish", "great white shark"]
    assert split_sizes(dataset) == (6, None, 6)


def test_imagenet_sketch_reads_wnid_folders(tmp_path):
    base = osp.join(tmp_path, "imagenet-sketch")
    write_classnames(osp.join(base, "classnames.txt"))
    write_wnid_folders(osp.join(base, "images"), WNIDS, 2)
    dataset = build_dataset(make_cfg(tmp_path, "ImageNetSketch"))
    assert dataset.num_classes == 3 and len(dataset.test) == 6


@pytest.mark.parametrize("name,dataset_dir,image_subdir", [("ImageNetA", "imagenet-adversarial", "imagenet-a"),
                                                          ("ImageNetR", "imagenet-rendition", "imagenet-r")])
def test_imagenet_a_and_r_label_the_subset_of_classes_present(tmp_path, name, dataset_dir, image_subdir):
    base = osp.join(tmp_path, dataset_dir)
    write_classnames(osp.join(base, "classnames.txt"))
    write_wnid_folders(osp.join(base, image_subdir), [WNIDS[0], WNIDS[2]], 2, ext="jpg")
    write_lines(osp.join(base, image_subdir, "README.txt"), ["not a class"])
    dataset = build_dataset(make_cfg(tmp_path, name))
    assert dataset.lab2cname == {0: "tench", 1: "great white shark"}
    assert split_sizes(dataset) == (4, None, 4)


def test_imagenet_variant_with_an_unknown_folder_names_it(tmp_path):
    base = osp.join(tmp_path, "imagenet-sketch")
    write_classnames(osp.join(base, "classnames.txt"))
    write_image(osp.join(base, "images", "n99999999", "x.jpg"))
    with pytest.raises(KeyError, match="n99999999"):
        build_dataset(make_cfg(tmp_path, "ImageNetSketch"))


def test_image_folder_builds_split_json_and_turns_underscores_into_spaces(tmp_path):
    for folder in ("golden_retriever", "tabby_cat"):
        for i in range(4):
            write_image(osp.join(tmp_path, folder, f"{i}.png"))
    dataset = build_dataset(make_cfg(tmp_path, "ImageFolder"))
    assert dataset.classnames == ["golden retriever", "tabby cat"]
    assert osp.isfile(osp.join(tmp_path, "split.json"))
    # the few-shot cache folder and split.json at the root are not mistaken for classes
    again = build_dataset(make_cfg(tmp_path, "ImageFolder", num_shots=1))
    os.remove(osp.join(tmp_path, "split.json"))
    rebuilt = build_dataset(make_cfg(tmp_path, "ImageFolder"))
    assert again.num_classes == rebuilt.num_classes == 2


def test_image_folder_without_class_folders_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no class folders"):
        build_dataset(make_cfg(tmp_path, "ImageFolder"))


# ---------------------------------------------------------------- registry and configs
def test_unknown_or_empty_dataset_name_lists_the_available_ones(tmp_path):
    with pytest.raises(KeyError, match="OxfordPets"):
        build_dataset(make_cfg(tmp_path, "OxfordPet"))
    with pytest.raises(ValueError, match="DATASET.NAME is empty.*EuroSAT"):
        build_dataset(make_cfg(tmp_path, ""))


def test_every_dataset_config_names_a_registered_dataset():
    files = {osp.basename(p): p for p in glob.glob(osp.join(REPO, "configs", "datasets", "*.yaml"))}
    expected = {"imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch",
                "imagenet_a", "imagenet_r", "imagefolder", "gatescope_demo"}
    assert expected <= {name[:-5] for name in files}
    named = set()
    for path in files.values():
        cfg = get_cfg_default()
        cfg.merge_from_file(path)
        assert cfg.DATASET.NAME in DATASET_REGISTRY, path
        assert yaml.safe_load(open(path)) == {"DATASET": {"NAME": cfg.DATASET.NAME}}
        named.add(cfg.DATASET.NAME)
    assert named == set(DATASET_REGISTRY.registered_names())  # every dataset has its config file


def test_mirror_registry_copies_missing_names_only():
    source, target = Registry("DATASET"), Registry("DATASET")

    class A:
        pass

    class B:
        pass

    source.register(A)
    source.register(B)
    target.register(B, force=True)
    mirror_registry(source, target)
    assert target.get("A") is A and target.get("B") is B
