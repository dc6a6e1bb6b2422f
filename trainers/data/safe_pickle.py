"""Pickles of `Datum` lists in CoOp's format, read without Dassl and without running foreign code.

CoOp caches few-shot samples (`split_fewshot/shot_<K>-seed_<S>.pkl`) and ImageNet's file list
(`preprocessed.pkl`) with `pickle`, so the files name the class
`dassl.data.datasets.base_dataset.Datum`. Plain `pickle.load` would need Dassl installed, and
would run whatever callable a tampered file names. `load_datum_pickle` maps Dassl's class path
(and ours) to `trainers.data.datum.Datum` and refuses every other global.

`dump_datum_pickle` writes the same class path Dassl does, so a cache written by gatescope is
also read by an unmodified CoOp sharing the same data folder.
"""
import io
import pickle

from ..engine.utils import atomic_write_bytes
from .datum import Datum

__all__ = ["DATUM_CLASS_PATHS", "DisallowedGlobalError", "load_datum_pickle", "load_datum_lists",
           "dump_datum_pickle", "dumps_datum_pickle"]

# Where Datum has lived: Dassl's defining module, Dassl's re-export, and gatescope's.
DATUM_CLASS_PATHS = (
    ("dassl.data.datasets.base_dataset", "Datum"),
    ("dassl.data.datasets", "Datum"),
    ("trainers.data.datum", "Datum"),
)
# The class path written into new pickles: Dassl's, so CoOp reads gatescope's caches too.
_WRITTEN_MODULE, _WRITTEN_NAME = DATUM_CLASS_PATHS[0]

# Globals a list-of-Datum pickle can legitimately need besides Datum itself: protocols 0/1
# rebuild objects with copyreg._reconstructor(cls, object, state); sets are pickled via their
# constructor. None of these can run code beyond building the named allowed classes.
_ALLOWED_BUILTINS = {
    ("builtins", "object"): object,
    ("__builtin__", "object"): object,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
}
_ALLOWED_RECONSTRUCTORS = {("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor")}


class DisallowedGlobalError(pickle.UnpicklingError):
    """A data pickle references a global other than Datum and a few builtins."""


class _DatumUnpickler(pickle.Unpickler):
    """An unpickler that resolves only Datum (under any of its class paths) and a few builtins."""

    def __init__(self, file, source):
        super().__init__(file)
        self._source = source

    def find_class(self, module, name):
        if (module, name) in DATUM_CLASS_PATHS:
            return Datum
        if (module, name) in _ALLOWED_BUILTINS:
            return _ALLOWED_BUILTINS[(module, name)]
        if (module, name) in _ALLOWED_RECONSTRUCTORS:
            import copyreg

            return copyreg._reconstructor
        raise DisallowedGlobalError(
            f'refusing to load "{self._source}": it references {module}.{name}, but a CoOp/gatescope '
            "data cache may only contain Datum objects (dassl.data.datasets.base_dataset.Datum) in "
            "lists and dicts. If the file is yours and was made by another tool, delete it: gatescope "
            "rebuilds it from the dataset's split."
        )


def load_datum_pickle(path):
    """Load a CoOp/Dassl data pickle (few-shot cache or `preprocessed.pkl`) safely.

    Returns the unpickled object (normally a dict of lists of `Datum`). Raises
    `pickle.UnpicklingError` naming the file if it references anything but Datum and builtin
    containers, or if it is truncated or not a pickle.
    """
    with open(path, "rb") as f:
        try:
            return _DatumUnpickler(f, path).load()
        except DisallowedGlobalError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError) as e:
            raise pickle.UnpicklingError(
                f'cannot read "{path}" ({type(e).__name__}: {e}); the file is damaged or not a data '
                "cache. Delete it and it is rebuilt on the next run."
            ) from e


_DATUM_STATE = {"_impath": str, "_label": int, "_domain": int, "_classname": str}


def _datum_state_problem(item):
    """Why `item`'s unpickled state is not a Datum's (None when it is): a pickle sets the state
    directly, without Datum's constructor, so its fields are checked here."""
    state = vars(item)
    if (state.keys() == _DATUM_STATE.keys() and type(state["_impath"]) is str and type(state["_classname"]) is str
            and type(state["_label"]) is int and type(state["_domain"]) is int and state["_label"] >= 0
            and state["_domain"] >= 0):
        return None  # the common case, checked in one go (caches hold up to a million items)
    if set(state) != set(_DATUM_STATE):
        return f"attributes {sorted(state)} instead of {sorted(_DATUM_STATE)}"
    for name, kind in _DATUM_STATE.items():
        value = state[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{name} = {value!r} is not a {kind.__name__}"
        if kind is int and value < 0:
            return f"{name} = {value} is negative"
    return None


def load_datum_lists(path, required, optional=()):
    """A data cache that must be a dict of lists of Datum, checked for meaning (see `load_datum_pickle`).

    `required` keys must hold lists of Datum, `optional` keys may; each Datum's fields must be
    Dassl's four with their types (path and class name strings, label and domain integers >= 0).
    Other keys are returned unchecked (a cache's own record). Raises ValueError (or
    `pickle.UnpicklingError`) naming the file and saying to delete it.
    """
    data = load_datum_pickle(path)
    if not isinstance(data, dict):
        raise ValueError(f'"{path}" should hold a dict with {list(required)} lists of Datum, found a '
                         f"{type(data).__name__}. Delete it and it is rebuilt.")
    for key in list(required) + [k for k in optional if k in data]:
        items = data.get(key)
        if not isinstance(items, list) or not all(isinstance(item, Datum) for item in items):
            found = f"a dict with keys {sorted(map(str, data))}" if key not in data else \
                f'"{key}" holding a {type(items).__name__} that is not a list of Datum'
            raise ValueError(f'"{path}" should hold a dict with {list(required)} lists of Datum, found {found}. '
                             "Delete it and it is rebuilt.")
        for index, item in enumerate(items):
            problem = _datum_state_problem(item)
            if problem:
                raise ValueError(f'"{path}": item {index} of "{key}" is not a valid Datum ({problem}); the cache is '
                                 "damaged or was not written by CoOp or gatescope. Delete it and it is rebuilt.")
    return data


class _DasslPathPickler(pickle._Pickler):
    """The pure-Python pickler, writing `Datum` under Dassl's class path.

    The C pickler verifies every class path by importing it, which would need Dassl installed;
    the Python one lets `save_global` be overridden for this single class.
    """

    def save_global(self, obj, name=None):
        if obj is not Datum:
            return super().save_global(obj, name)
        if self.proto >= 4:
            self.save(_WRITTEN_MODULE)
            self.save(_WRITTEN_NAME)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{_WRITTEN_MODULE}\n{_WRITTEN_NAME}\n".encode("ascii"))
        self.memoize(obj)


def dumps_datum_pickle(obj, protocol=pickle.HIGHEST_PROTOCOL):
    """`obj` pickled as CoOp writes it (Datum under Dassl's class path), as bytes."""
    buffer = io.BytesIO()
    _DasslPathPickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


def dump_datum_pickle(obj, path, protocol=pickle.HIGHEST_PROTOCOL):
    """Write `obj` to `path` atomically (a concurrent reader sees the old file or the whole new one)."""
    atomic_write_bytes(path, dumps_datum_pickle(obj, protocol=protocol))
