"""Datum and the restricted unpickler: CoOp/Dassl caches load without Dassl; foreign code does not run."""
import os
import pickle
import sys
import types

import pytest
from PIL import Image

from trainers.data import Datum
from trainers.data.safe_pickle import dump_datum_pickle, dumps_datum_pickle, load_datum_pickle

DASSL_MODULES = ("dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset")


def _image(path):
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)
    return str(path)


class _FakeDasslModules:
    """Dassl's module tree with a Datum class like Dassl's, present in sys.modules only inside `with`."""

    def __enter__(self):
        assert not any(name in sys.modules for name in DASSL_MODULES), "a real dassl is imported"
        modules = {name: types.ModuleType(name) for name in DASSL_MODULES}

        class Datum:  # Dassl's state: four private attributes, no file check needed here
            def __init__(self, impath, label, domain, classname):
                self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

        Datum.__module__ = "dassl.data.datasets.base_dataset"
        Datum.__qualname__ = "Datum"
        modules["dassl.data.datasets.base_dataset"].Datum = Datum
        modules["dassl.data.datasets"].Datum = Datum
        sys.modules.update(modules)
        self.Datum = Datum
        return self

    def __exit__(self, *exc):
        for name in DASSL_MODULES:
            sys.modules.pop(name, None)


def test_datum_checks_the_file_and_keeps_dassl_attribute_names(tmp_path):
    path = _image(tmp_path / "a.png")
    item = Datum(impath=path, label=3, domain=1, classname="cat")
    assert (item.impath, item.label, item.domain, item.classname) == (path, 3, 1, "cat")
    assert set(vars(item)) == {"_impath", "_label", "_domain", "_classname"}
    with pytest.raises(AttributeError):
        item.label = 4  # read-only, as in Dassl
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        Datum(impath=missing)
    with pytest.raises(TypeError, match="str"):
        Datum(impath=tmp_path / "a.png")


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_cache_pickled_by_dassl_loads_without_dassl(tmp_path, protocol):
    paths = [_image(tmp_path / f"{i}.png") for i in range(3)]
    with _FakeDasslModules() as dassl:
        data = {
            "train": [dassl.Datum(paths[0], 0, 0, "cat"), dassl.Datum(paths[1], 1, 2, "dog")],
            "val": [dassl.Datum(paths[2], 1, 0, "dog")],
        }
        cache = tmp_path / "shot_1-seed_1.pkl"
        with open(cache, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
    assert "dassl" not in sys.modules

    loaded = load_datum_pickle(str(cache))
    assert all(isinstance(item, Datum) for items in loaded.values() for item in items)
    assert [(d.impath, d.label, d.domain, d.classname) for d in loaded["train"]] == [
        (paths[0], 0, 0, "cat"), (paths[1], 1, 2, "dog")]
    assert loaded["val"][0].classname == "dog"


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_a_pickle_with_a_disallowed_global_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "created_by_pickle"
    cache = tmp_path / "shot_1-seed_1.pkl"
    cache.write_bytes(pickle.dumps({"train": [_Exploit(str(target))]}))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load .*shot_1-seed_1\.pkl.*(posix|os)\.mkdir"):
        load_datum_pickle(str(cache))
    assert not target.exists()


def test_a_truncated_pickle_names_the_file(tmp_path):
    item = Datum(impath=_image(tmp_path / "a.png"))
    cache = tmp_path / "broken.pkl"
    cache.write_bytes(dumps_datum_pickle({"train": [item]})[:-10])
    with pytest.raises(pickle.UnpicklingError, match="broken.pkl"):
        load_datum_pickle(str(cache))


def test_gatescope_writes_dassl_class_path_so_coop_can_read_its_caches(tmp_path):
    item = Datum(impath=_image(tmp_path / "a.png"), label=2, domain=1, classname="dog")
    cache = tmp_path / "cache.pkl"
    dump_datum_pickle({"train": [item, item]}, str(cache))
    raw = cache.read_bytes()
    assert b"dassl.data.datasets.base_dataset" in raw and b"trainers" not in raw

    loaded = load_datum_pickle(str(cache))["train"]
    assert isinstance(loaded[0], Datum) and vars(loaded[0]) == vars(item)
    assert loaded[0] is loaded[1]  # memoised like any pickle
    with _FakeDasslModules() as dassl:  # what an unmodified CoOp sees with plain pickle.load
        coop_view = pickle.loads(raw)["train"][0]
        assert isinstance(coop_view, dassl.Datum) and vars(coop_view) == vars(item)
