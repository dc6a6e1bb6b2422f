"""Few-shot sampling and its cache, base/new subsampling, and CoOp's split helpers."""
import json
import os
import random

import pytest
from PIL import Image

from trainers.data import DatasetBase, Datum
from trainers.data.safe_pickle import load_datum_pickle
from trainers.data.splits import (
    read_and_split_data,
    read_split,
    save_split,
    split_trainval,
    subsample_classes,
)
from trainers.engine.config import get_cfg_default


def _images(folder, n, prefix="im"):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"{prefix}{i}.png")
        Image.new("RGB", (2, 2)).save(path)
        paths.append(path)
    return paths


def _data(tmp_path, counts, domains=1):
    """Datum list with counts[label] images per class (class names c<label>), domains cycling."""
    items = []
    for label, n in enumerate(counts):
        for i, path in enumerate(_images(tmp_path / f"c{label}", n)):
            items.append(Datum(impath=path, label=label, domain=i % domains, classname=f"c{label}"))
    return items


def _keys(items):
    return [(d.impath, d.label, d.domain, d.classname) for d in items]


def test_fewshot_is_k_per_class_deterministic_per_seed_and_exactly_dassls_draw(tmp_path):
    data = _data(tmp_path, [6, 7, 8])
    base = DatasetBase(train_x=data)
    random.seed(1)
    first = base.generate_fewshot_dataset(data, num_shots=4)
    random.seed(1)
    again = base.generate_fewshot_dataset(data, num_shots=4)
    random.seed(2)
    other = base.generate_fewshot_dataset(data, num_shots=4)
    assert [d.label for d in first] == [0] * 4 + [1] * 4 + [2] * 4
    assert _keys(first) == _keys(again) and _keys(first) != _keys(other)

    # Dassl's draw: random.sample(items_of_label, K), labels in order of first appearance.
    random.seed(1)
    by_label = [[d for d in data if d.label == y] for y in (0, 1, 2)]
    assert _keys(first) == _keys([d for items in by_label for d in random.sample(items, 4)])

    two = base.generate_fewshot_dataset(data, data, num_shots=1)
    assert len(two) == 2 and len(two[0]) == 3
    assert base.generate_fewshot_dataset(data, num_shots=-1) is data


def test_fewshot_takes_all_of_a_small_class_and_says_which(tmp_path, capsys):
    data = _data(tmp_path, [5, 2])
    sample = DatasetBase(train_x=data).generate_fewshot_dataset(data, num_shots=4)
    assert [d.label for d in sample].count(1) == 2
    warning = [line for line in capsys.readouterr().out.splitlines() if "Warning" in line]
    assert len(warning) == 1 and '"c1"' in warning[0] and "only 2" in warning[0]
    repeated = DatasetBase(train_x=data).generate_fewshot_dataset(data, num_shots=4, repeat=True)
    assert [d.label for d in repeated].count(1) == 4


def _cfg(num_shots, seed, subsample="all"):
    cfg = get_cfg_default()
    cfg.DATASET.NUM_SHOTS = num_shots
    cfg.SEED = seed
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    return cfg


def test_fewshot_sample_is_cached_per_shots_and_seed_and_reloaded(tmp_path, capsys):
    train, val = _data(tmp_path / "train", [8, 8, 8], domains=2), _data(tmp_path / "val", [6, 6, 6])
    test = _data(tmp_path / "test", [3, 3, 3])
    base = DatasetBase(train_x=train)
    cache_dir = tmp_path / "split_fewshot"

    random.seed(5)
    tr1, va1, te1 = base.fewshot_and_subsample(_cfg(5, 5), train, val, test, str(cache_dir))
    cache = cache_dir / "shot_5-seed_5.pkl"
    assert cache.is_file() and "Saving preprocessed few-shot data" in capsys.readouterr().out
    assert len(tr1) == 15 and len(va1) == 12 and te1 is test  # val: min(K, 4) per class
    assert set(load_datum_pickle(str(cache))) == {"train", "val", "gatescope"}  # CoOp's keys + gatescope's record

    random.seed(999)  # a different global state: the cache, not the draw, decides
    tr2, va2, _ = base.fewshot_and_subsample(_cfg(5, 5), train, val, test, str(cache_dir))
    assert "Loading preprocessed few-shot data" in capsys.readouterr().out
    assert _keys(tr2) == _keys(tr1) and _keys(va2) == _keys(va1)
    assert {d.domain for d in tr2} == {0, 1}

    # ImageNet-style (no val): the cache holds only "train".
    tr3, va3, _ = base.fewshot_and_subsample(_cfg(2, 1), train, None, test, str(cache_dir))
    assert va3 is None and len(tr3) == 6
    assert set(load_datum_pickle(str(cache_dir / "shot_2-seed_1.pkl"))) == {"train", "gatescope"}
    # NUM_SHOTS -1: everything, no cache written.
    tr4, _, _ = base.fewshot_and_subsample(_cfg(-1, 1), train, val, test, str(tmp_path / "none"))
    assert tr4 is train and not (tmp_path / "none").exists()


def test_a_cache_of_the_wrong_shape_is_refused_with_its_path(tmp_path):
    train = _data(tmp_path, [3, 3])
    cache_dir = tmp_path / "split_fewshot"
    cache_dir.mkdir()
    from trainers.data.safe_pickle import dump_datum_pickle

    dump_datum_pickle({"train": train}, str(cache_dir / "shot_1-seed_1.pkl"))  # lacks "val"
    with pytest.raises(ValueError, match=r"shot_1-seed_1\.pkl.*\['train', 'val'\]"):
        DatasetBase(train_x=train).fewshot_and_subsample(_cfg(1, 1), train, train, train, str(cache_dir))


def test_base_new_split_relabels_from_zero_and_keeps_domains(tmp_path):
    train = _data(tmp_path / "train", [2, 2, 2, 2, 2], domains=2)
    test = _data(tmp_path / "test", [1, 1, 1, 1, 1])
    base_train, base_test = subsample_classes(train, test, subsample="base")
    new_train, new_test, none = subsample_classes(train, test, None, subsample="new")
    assert sorted({d.label for d in base_train}) == [0, 1, 2]  # ceil(5 / 2) = 3 base classes
    assert [d.classname for d in base_test] == ["c0", "c1", "c2"]
    assert sorted({d.label for d in new_train}) == [0, 1]
    assert [(d.label, d.classname) for d in new_test] == [(0, "c3"), (1, "c4")]
    assert none is None
    assert [d.domain for d in new_train] == [0, 1, 0, 1]
    assert subsample_classes(train, test, subsample="all") == [train, test]


def test_base_new_split_needs_two_classes_and_a_known_mode(tmp_path):
    one_class = _data(tmp_path, [3])
    with pytest.raises(ValueError, match="1 class"):
        subsample_classes(one_class, subsample="base")
    with pytest.raises(ValueError, match="all.*base.*new"):
        subsample_classes(one_class, subsample="half")


def test_split_file_round_trip_with_and_without_domains(tmp_path):
    root = tmp_path / "images"
    items = _data(root, [2, 2], domains=2)
    path = tmp_path / "split.json"
    save_split(items, items[:1], items[1:2], str(path), str(root))
    entries = json.loads(path.read_text())
    assert entries["train"][0] == ["c0/im0.png", 0, "c0", 0]
    assert _keys(read_split(str(path), str(root))[0]) == _keys(items)

    single = _data(tmp_path / "single", [2])
    save_split(single, single, single, str(path), str(tmp_path / "single"))
    assert json.loads(path.read_text())["val"][1] == ["c0/im1.png", 0, "c0"]  # CoOp's 3-element entries


def test_read_split_names_the_split_file_when_an_image_is_missing(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": [["a/x.jpg", 0, "a"]], "val": [], "test": []}))
    with pytest.raises(FileNotFoundError, match=r"x\.jpg.*split\.json"):
        read_split(str(path), str(tmp_path))


def test_split_trainval_holds_out_a_fifth_of_each_class(tmp_path):
    random.seed(0)
    train, val = split_trainval(_data(tmp_path, [10, 5]))
    assert [d.label for d in val].count(0) == 2 and [d.label for d in val].count(1) == 1
    assert len(train) == 12
    with pytest.raises(ValueError, match='class 0 \\("c0"\\) has 2'):
        split_trainval(_data(tmp_path / "small", [2]))


def test_read_and_split_data_per_class_fractions_names_and_seed(tmp_path):
    for name, n in (("dog", 10), ("cat", 4), ("skip", 4)):
        _images(tmp_path / name, n)
    random.seed(3)
    train, val, test = read_and_split_data(str(tmp_path), ignored=["skip"], new_cnames={"cat": "kitty"})
    assert [(d.label, d.classname) for d in val] == [(0, "kitty"), (1, "dog"), (1, "dog")]
    assert (len(train), len(test)) == (2 + 5, 1 + 3)
    random.seed(3)
    again = read_and_split_data(str(tmp_path), ignored=["skip"], new_cnames={"cat": "kitty"})
    assert _keys(again[0]) == _keys(train)
    _images(tmp_path / "tiny", 3)
    with pytest.raises(ValueError, match="tiny.*3 image"):
        read_and_split_data(str(tmp_path))
