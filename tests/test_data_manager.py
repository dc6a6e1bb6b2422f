"""DataManager, DatasetWrapper, the samplers and the transforms, on the generated demo dataset."""
import collections
import os.path as osp

import pytest
import torch
from PIL import Image

from trainers.data import DataManager, DatasetWrapper, Datum, build_transform
from trainers.data.data_manager import build_data_loader
from trainers.data.demo_images import generate_demo_dataset
from trainers.data.transforms import AVAI_CHOICES, UNAVAILABLE
from trainers.engine.config import get_cfg_default


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_demo_dataset(str(root / "gatescope_demo"))
    return str(root)


def _cfg(root, **overrides):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = root
    cfg.DATASET.NAME = "GatescopeDemo"
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.SIZE = (32, 32)
    cfg.INPUT.TRANSFORMS = ("random_flip", "normalize")
    cfg.SEED = 1
    for key, value in overrides.items():
        node, name = cfg, key.split(".")
        for part in name[:-1]:
            node = getattr(node, part)
        setattr(node, name[-1], value)
    return cfg


def test_data_manager_builds_dassls_loaders_with_the_expected_batches(demo_root, capsys):
    cfg = _cfg(demo_root, **{"DATASET.NUM_SHOTS": 4, "DATALOADER.TRAIN_X.BATCH_SIZE": 16,
                             "DATALOADER.TEST.BATCH_SIZE": 50})
    dm = DataManager(cfg)
    table = capsys.readouterr().out
    assert "# train_x" in table and "GatescopeDemo" in table and "# val" in table
    assert dm.num_classes == 10 and dm.lab2cname[9] == "arrow" and dm.num_source_domains == 0
    assert dm.train_loader_u is None and dm.val_loader is not None
    assert len(dm.train_loader_x) == 40 // 16  # drop_last in training
    assert len(dm.test_loader) == 4  # 160 test images, last batch kept

    batch = next(iter(dm.train_loader_x))
    assert set(batch) == {"img", "label", "domain", "impath", "index"}
    assert batch["img"].shape == (16, 3, 32, 32) and batch["img"].dtype == torch.float32
    assert batch["label"].shape == (16,) and batch["domain"].max() <= 3 and len(batch["impath"]) == 16
    test_batch = next(iter(dm.test_loader))
    assert test_batch["index"].tolist() == list(range(50))  # SequentialSampler


def test_small_training_set_keeps_its_only_batch_and_val_loader_is_none_without_val(tmp_path):
    for name in ("a_b", "c"):
        for i in range(4):
            path = tmp_path / name / f"{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (8, 8)).save(path)
    cfg = _cfg(str(tmp_path), **{"DATASET.NAME": "ImageFolder", "VERBOSE": False})
    dm = DataManager(cfg)
    assert len(dm.train_loader_x) == 1  # 4 images < batch size 32: drop_last is off
    assert dm.lab2cname == {0: "a b", 1: "c"}


def test_img0_k_transforms_and_custom_transforms(demo_root):
    cfg = _cfg(demo_root, **{"DATALOADER.RETURN_IMG0": True, "DATALOADER.K_TRANSFORMS": 2, "VERBOSE": False})
    dm = DataManager(cfg, custom_tfm_test=build_transform(cfg, is_train=False, choices=[]))
    item = dm.train_loader_x.dataset[0]
    assert isinstance(item["img"], list) and len(item["img"]) == 2 and item["img0"].shape == (3, 32, 32)
    assert set(dm.test_loader.dataset[0]) == {"img", "img0", "label", "domain", "impath", "index"}

    wrapper = DatasetWrapper(cfg, dm.dataset.test, transform=[build_transform(cfg), build_transform(cfg)],
                             is_train=False)
    assert {"img", "img2"} <= set(wrapper[0])
    no_transform = _cfg(demo_root, **{"INPUT.NO_TRANSFORM": True})
    assert build_transform(no_transform) is None
    assert DatasetWrapper(no_transform, dm.dataset.test)[0]["img"].shape == (3, 32, 32)


@pytest.mark.parametrize("sampler,n_domain,n_ins", [("RandomDomainSampler", 4, 0), ("RandomDomainSampler", 2, 0),
                                                    ("SeqDomainSampler", 0, 0), ("RandomClassSampler", 0, 4)])
def test_samplers_by_name_compose_batches_as_dassl(demo_root, sampler, n_domain, n_ins):
    cfg = _cfg(demo_root, VERBOSE=False)
    data = DataManager(cfg).dataset.train_x
    loader = build_data_loader(cfg, sampler_type=sampler, data_source=data, batch_size=8, n_domain=n_domain,
                               n_ins=n_ins, tfm=build_transform(cfg), is_train=True)
    batches = list(loader)
    assert batches and all(b["img"].shape[0] == 8 for b in batches)
    for b in batches:
        if sampler == "RandomClassSampler":
            counts = collections.Counter(b["label"].tolist())
            assert sorted(counts.values()) == [4, 4]
        else:
            counts = collections.Counter(b["domain"].tolist())
            assert len(counts) == (n_domain or 4) and set(counts.values()) == {8 // (n_domain or 4)}


def test_unknown_sampler_and_empty_data_are_explained(demo_root):
    cfg = _cfg(demo_root, VERBOSE=False)
    data = DataManager(cfg).dataset.test
    with pytest.raises(ValueError, match="RandomSampler, SequentialSampler, RandomDomainSampler"):
        build_data_loader(cfg, sampler_type="Shuffle", data_source=data)
    with pytest.raises(ValueError, match="empty"):
        build_data_loader(cfg, sampler_type="RandomSampler", data_source=[])
    with pytest.raises(ValueError, match="multiple"):
        build_data_loader(cfg, sampler_type="SeqDomainSampler", data_source=data, batch_size=6)


def test_an_unreadable_image_error_names_the_file(tmp_path, demo_root):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    cfg = _cfg(demo_root, VERBOSE=False)
    wrapper = DatasetWrapper(cfg, [Datum(impath=str(bad))], transform=build_transform(cfg, is_train=False))
    with pytest.raises(OSError, match="broken.png"):
        wrapper[0]


SUPPORTED = [name for name in AVAI_CHOICES if name not in UNAVAILABLE]


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_supported_dassl_transform_name_builds_and_runs(demo_root, name):
    cfg = _cfg(demo_root, **{"INPUT.INTERPOLATION": "bicubic", "INPUT.GB_K": 3, "INPUT.CUTOUT_LEN": 8})
    image = Image.open(osp.join(demo_root, "gatescope_demo", "images", "star", "train_dark_000.png")).convert("RGB")
    out = build_transform(cfg, is_train=True, choices=[name])(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert build_transform(cfg, is_train=False, choices=[name])(image).shape == (3, 32, 32)


def test_transform_names_and_settings_are_checked(demo_root):
    cfg = _cfg(demo_root)
    with pytest.raises(ValueError, match="random_resized_crop"):
        build_transform(cfg, choices=["random_flop"])
    with pytest.raises(NotImplementedError, match="randaugment2"):
        build_transform(cfg, choices=["randaugment2"])
    with pytest.raises(ValueError, match="bilinear"):
        build_transform(_cfg(demo_root, **{"INPUT.INTERPOLATION": "lanczos"}))


def test_test_transform_resizes_the_short_edge_then_center_crops(demo_root):
    cfg = _cfg(demo_root, **{"INPUT.SIZE": (16, 24)})
    wide = Image.new("RGB", (100, 50))
    assert build_transform(cfg, is_train=False)(wide).shape == (3, 16, 24)
    normalised = build_transform(_cfg(demo_root), is_train=False)(Image.new("RGB", (8, 8), (255, 255, 255)))
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(normalised[:, 0, 0], expected)
