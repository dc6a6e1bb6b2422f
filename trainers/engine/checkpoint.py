"""Checkpoints in Dassl's layout, written atomically and read with `weights_only=True`; RNG state.

Layout (per registered model folder, as Dassl): `model.pth.tar-<epoch>` (or a given name such as
`model-best.pth.tar`), a text file `checkpoint` naming the last file written, and
`model-best.pth.tar` when `is_best`. The content is a dict (`state_dict`, `epoch`, `optimizer`,
`scheduler`, `val_result`, ...).

Differences from Dassl, each fixing something its users hit:
- every file is written to a temp file, fsync'ed and renamed, so a crash mid-save never leaves a
  truncated checkpoint under a real name (and resume skips a corrupt one with a warning);
- loading uses `torch.load(weights_only=True)` (no code runs from a checkpoint). Dassl's own
  checkpoints pickle its warm-up scheduler object; those (and any file that pickles Python
  objects, in torch's zip or pre-1.6 format or as a plain pickle) are called untrusted, not
  corrupt, and load only when the user says they trust the file (`trust=True` or env
  `GATESCOPE_TRUST_CHECKPOINTS=1`), and then even without Dassl installed: classes that cannot be
  imported become inert `UnimportableObject` stubs (see trust.py);
- `capture_rng_state` / `restore_rng_state` let a resumed run draw the same random numbers;
- a checkpoint records what it was made for (`meta`: trainer, backbone, class names and count,
  the prompt's config keys, which tensors are class-specific, the run's last epoch) and
  `check_checkpoint_meta` refuses one made for something else, saying which;
  `check_class_transfer` refuses class-specific weights (CoOp's CSC) on another class set;
- the `checkpoint` pointer file is followed only to a file inside its own folder.
"""
import io
import os
import os.path as osp
import pickle
import random
import re
import types
import warnings
from collections import OrderedDict

import numpy as np
import torch

from .trust import (TRUST_CHECKPOINTS_ENV, describe_load_failure, is_torchscript_archive, scan_pickles,
                    trusted_by_env)
from .utils import atomic_write_bytes, mkdir_if_missing

__all__ = [
    "TRUST_ENV_VAR", "CheckpointError", "CorruptCheckpointError", "UntrustedCheckpointError",
    "UnimportableObject", "save_checkpoint", "load_checkpoint", "resume_from_checkpoint",
    "capture_rng_state", "restore_rng_state", "CheckpointMismatchError", "check_checkpoint_meta",
    "check_class_transfer", "list_checkpoints", "BEST_NAME",
]

TRUST_ENV_VAR = TRUST_CHECKPOINTS_ENV
BEST_NAME = "model-best.pth.tar"
_EPOCH_FILE = re.compile(r"^model\.pth\.tar-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or not a torch checkpoint at all."""

    def __init__(self, fpath, reason):
        self.fpath = fpath
        super().__init__(
            f'Checkpoint "{fpath}" is corrupt or truncated and cannot be read ({reason}). It was probably '
            "cut off by an interrupted save or copy; use an earlier checkpoint or re-copy the file."
        )


class UntrustedCheckpointError(CheckpointError):
    """The file pickles Python objects, which `weights_only=True` refuses to rebuild."""

    def __init__(self, fpath, globals_found):
        self.fpath = fpath
        self.globals_found = list(globals_found)
        names = ", ".join(self.globals_found[:8]) or "unknown"
        if len(self.globals_found) > 8:
            names += f", ... ({len(self.globals_found)} in all)"
        dassl = any(g.startswith("dassl.") for g in self.globals_found)
        origin = ("It looks like a checkpoint written by the original Dassl, which pickles its warm-up "
                  "scheduler object inside 'scheduler'. " if dassl else "")
        super().__init__(
            f'Checkpoint "{fpath}" contains pickled Python objects ({names}), so it was not loaded with '
            f"torch.load(weights_only=True). {origin}Unpickling can run arbitrary code: only if you trust "
            f"where this file came from, set the environment variable {TRUST_ENV_VAR}=1 (or call "
            "load_checkpoint(..., trust=True)); classes that cannot be imported are then replaced by inert "
            "stubs, so Dassl need not be installed."
        )


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was made for another trainer, backbone, class set or prompt size."""


def _names_difference(saved, current, shown=5):
    """A short account of how two class-name lists differ (they may hold 1000 names)."""
    saved, current = list(saved), list(current)
    if sorted(saved) == sorted(current):
        first = next(i for i, (a, b) in enumerate(zip(saved, current)) if a != b)
        return (f"the same {len(saved)} classes in another order (label {first} is {saved[first]!r} there, "
                f"{current[first]!r} here)")
    saved_set, current_set = set(saved), set(current)
    only_saved = [n for n in saved if n not in current_set]
    only_current = [n for n in current if n not in saved_set]

    def some(names):
        return ", ".join(map(repr, names[:shown])) + (f", ... ({len(names)} in all)" if len(names) > shown else "")
    parts = [f"{len(saved)} there, {len(current)} here"]
    if only_saved:
        parts.append(f"only in the checkpoint: {some(only_saved)}")
    if only_current:
        parts.append(f"only in this run: {some(only_current)}")
    return "; ".join(parts)


def _describe_difference(key, saved, current):
    if key == "classnames":
        return f"class names ({_names_difference(saved, current)})"
    if isinstance(saved, dict) and isinstance(current, dict):
        return "; ".join(f"{k} {saved.get(k, '<absent>')!r} (this run: {current.get(k, '<absent>')!r})"
                         for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k))
    return f"{key} {saved!r} (this run: {current!r})"


def check_checkpoint_meta(state, expected, fpath):
    """Raise CheckpointMismatchError when `state["meta"]` differs from `expected` in any key.

    `expected` is e.g. {"trainer": "CoOp", "backbone": "ViT-B/16", "num_classes": 100,
    "classnames": [...], "prompt": {"TRAINER.COOP.N_CTX": 16, ...}}; only keys present in both
    are compared, so checkpoints of older gatescope versions are checked on what they record.
    Checkpoints without "meta" (CoOp's and Dassl's own) pass: their state dict is still checked
    key by key and shape by shape when it is loaded.
    """
    meta = state.get("meta") if isinstance(state, dict) else None
    if not isinstance(meta, dict):
        return
    wrong = [_describe_difference(key, meta[key], value) for key, value in expected.items()
             if key in meta and meta[key] != value]
    if wrong:
        raise CheckpointMismatchError(
            f'Checkpoint "{fpath}" was made for a different run: {"; ".join(wrong)}. Point --model-dir / '
            "--resume / --output-dir at a checkpoint of this trainer, backbone and dataset, or change the "
            "config to match it."
        )


def check_class_transfer(state, classnames, fpath):
    """Refuse weights whose class-specific tensors (meta "class_specific", e.g. CoOp's CSC context)
    were learned for other classes than `classnames`.

    Weights shared by all classes load onto any class set (base-to-new and cross-dataset
    evaluation do exactly that); a class-specific context belongs to its class and cannot be
    carried to another one by index. Checkpoints without that record pass (their tensors are
    checked by shape when loaded).
    """
    meta = state.get("meta") if isinstance(state, dict) else None
    if not isinstance(meta, dict) or not meta.get("class_specific") or "classnames" not in meta:
        return
    saved = list(meta["classnames"])
    if saved == list(classnames):
        return
    keys = ", ".join(meta["class_specific"])
    raise CheckpointMismatchError(
        f'Checkpoint "{fpath}" holds class-specific prompt context ({keys}: one learned context per class, '
        f"CSC True) for other classes than this run's: {_names_difference(saved, classnames)}. A class-specific "
        "context cannot be applied to another class, so it is not loaded. Evaluate it on the classes it was "
        "trained on (e.g. DATASET.SUBSAMPLE_CLASSES base for a base-to-new run), or train with a shared context "
        "(TRAINER.COOP.CSC False) to transfer to new classes or datasets."
    )


# ---------------------------------------------------------------- save
def save_checkpoint(state, save_dir, is_best=False, remove_module_from_keys=True, model_name=""):
    """Write `state` to `save_dir/<model_name or model.pth.tar-<state['epoch']>>` atomically.

    Then (atomically too) write the text file `save_dir/checkpoint` naming that file, and copy it
    to `save_dir/model-best.pth.tar` when `is_best`. `remove_module_from_keys` strips the
    "module." prefix DataParallel adds to `state["state_dict"]` keys (as Dassl does); the caller's
    dict is not modified. Returns the path written.
    """
    mkdir_if_missing(save_dir)
    state = dict(state)
    if remove_module_from_keys and isinstance(state.get("state_dict"), dict):
        state["state_dict"] = OrderedDict(
            (k[len("module."):] if k.startswith("module.") else k, v) for k, v in state["state_dict"].items()
        )
    if not model_name:
        if "epoch" not in state:
            raise KeyError("save_checkpoint() needs state['epoch'] to name the file, or a model_name")
        model_name = f"model.pth.tar-{state['epoch']}"
    fpath = osp.join(save_dir, model_name)

    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(fpath, data, kill_point_name="checkpoint_write")
    print(f"Checkpoint saved to {fpath}")
    atomic_write_bytes(osp.join(save_dir, "checkpoint"), f"{model_name}\n".encode("utf-8"))
    if is_best and model_name != BEST_NAME:
        best_fpath = osp.join(save_dir, BEST_NAME)
        atomic_write_bytes(best_fpath, data)
        print(f'Best checkpoint saved to "{best_fpath}"')
    return fpath


# ---------------------------------------------------------------- load
class UnimportableObject:
    """Stands in for an object whose class could not be imported while loading a trusted pickle.

    It keeps what the pickle held: the original `module` and `qualname` on its class, the
    constructor arguments in `_stub_args`, and the object's state as attributes (a dict state) or
    in `_stub_state`. It has no behaviour of the original class.
    """

    _stub_module = ""
    _stub_qualname = ""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj._stub_args = args
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots) form
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._stub_state = state

    def __repr__(self):
        return f"<UnimportableObject {self._stub_module}.{self._stub_qualname}>"


_stub_classes = {}


def _stub_class(module, qualname):
    key = (module, qualname)
    if key not in _stub_classes:
        _stub_classes[key] = type(qualname.rsplit(".", 1)[-1], (UnimportableObject,),
                                  {"_stub_module": module, "_stub_qualname": qualname})
    return _stub_classes[key]


class _StubbingUnpickler(pickle.Unpickler):
    """Resolves classes normally; a class whose module or attribute is missing becomes a stub."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _stub_class(module, name)


def _stubbing_load(file, **kwargs):
    return _StubbingUnpickler(file, **kwargs).load()


# torch.load(pickle_module=...) wants a module-like object with Unpickler and load.
_stubbing_pickle = types.ModuleType("gatescope_stubbing_pickle")
_stubbing_pickle.Unpickler = _StubbingUnpickler
_stubbing_pickle.load = _stubbing_load
_stubbing_pickle.Pickler = pickle.Pickler
_stubbing_pickle.dump = pickle.dump


def _trust_from_env():
    return trusted_by_env(TRUST_ENV_VAR)


def load_checkpoint(fpath, trust=False):
    """Load a checkpoint onto the CPU with `torch.load(weights_only=True)`.

    A file that fails to load that way is told apart by scanning its pickles (never unpickling
    them): one that names Python functions or classes beyond tensors and containers is
    *untrusted* (a checkpoint of the original Dassl, or a file crafted to run code), whether it is
    in torch's zip format, torch's pre-1.6 format or a plain pickle; one that names nothing of the
    kind is *corrupt*.

    Raises:
        FileNotFoundError: no file at `fpath`.
        UntrustedCheckpointError: the file pickles Python objects (e.g. one written by the
            original Dassl) and neither `trust=True` nor env GATESCOPE_TRUST_CHECKPOINTS=1 is set.
            With trust it is fully unpickled; classes that cannot be imported become
            `UnimportableObject` stubs.
        CorruptCheckpointError: the file is truncated or not a checkpoint.
        CheckpointError: the file is a TorchScript archive (a model program, not a checkpoint).
    """
    if not fpath:
        raise ValueError("load_checkpoint() got an empty path")
    fpath = os.fspath(fpath)
    if not osp.exists(fpath):
        raise FileNotFoundError(f'No checkpoint file at "{fpath}"')
    if is_torchscript_archive(fpath):
        # torch.load hands such a file to torch.jit.load, which runs the program it carries.
        raise CheckpointError(
            f'"{fpath}" is a TorchScript archive (torch.jit.save), not a training checkpoint; it is never '
            "loaded as one. Backbone weights in that format go to MODEL.BACKBONE.PRETRAINED."
        )
    try:
        return torch.load(fpath, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        weights_only_error = error
    scan = scan_pickles(fpath)
    if not scan.unsafe:
        raise CorruptCheckpointError(fpath, describe_load_failure(weights_only_error)) from weights_only_error
    if not (trust or _trust_from_env()):
        raise UntrustedCheckpointError(fpath, scan.unsafe) from weights_only_error
    try:
        if scan.kind == "pickle":  # written with pickle.dump: torch.load cannot read it at all
            with open(fpath, "rb") as f:
                return _stubbing_load(f)
        return torch.load(fpath, map_location="cpu", weights_only=False, pickle_module=_stubbing_pickle)
    except Exception as error:
        raise CorruptCheckpointError(fpath, describe_load_failure(error)) from error


# ---------------------------------------------------------------- resume
def _epoch_files(fdir):
    """`model.pth.tar-N` files in `fdir`, newest epoch first."""
    found = []
    for name in os.listdir(fdir):
        match = _EPOCH_FILE.match(name)
        if match and osp.isfile(osp.join(fdir, name)):
            found.append((int(match.group(1)), name))
    return [name for _, name in sorted(found, reverse=True)]


def list_checkpoints(fdir):
    """The checkpoint files in `fdir`: `model.pth.tar-N` newest first, then `model-best.pth.tar`."""
    if not osp.isdir(fdir):
        return []
    return _epoch_files(fdir) + ([BEST_NAME] if osp.isfile(osp.join(fdir, BEST_NAME)) else [])


def _pointer_target(fdir, pointer):
    """The file named in the `checkpoint` pointer file, when it is a file inside `fdir`; else None
    (with a warning saying why it is not followed)."""
    with open(pointer, encoding="utf-8", errors="replace") as f:
        named = f.readline().strip()
    if not named:
        return None
    inside = osp.realpath(fdir)
    target = osp.realpath(osp.join(fdir, named))
    if named != osp.basename(named) or named in (".", "..") or osp.dirname(target) != inside:
        warnings.warn(f'"{pointer}" names "{named}", which is not a file of that folder; a checkpoint is only '
                      "resumed from its own folder, so the pointer is ignored and the newest model.pth.tar-N "
                      "there is used", stacklevel=3)
        return None
    if not osp.isfile(target):
        warnings.warn(f'"{pointer}" names "{named}", which does not exist; '
                      "looking for the newest model.pth.tar-N instead", stacklevel=3)
        return None
    return named


def resume_from_checkpoint(fdir, trust=False):
    """The checkpoint to resume from in folder `fdir`: `(path, state)`, or None if there is none.

    Tries the file named in `fdir/checkpoint` first (Dassl's rule; only a file of `fdir` itself:
    a pointer naming a path elsewhere is ignored with a warning), then the `model.pth.tar-N`
    files from the highest N down. A missing named file or a corrupt file is reported with a
    warning naming it and skipped. Raises CorruptCheckpointError if checkpoints exist but none
    is readable (rather than silently training from scratch over them), and
    UntrustedCheckpointError as `load_checkpoint` does.
    """
    if not osp.isdir(fdir):
        return None
    candidates = []
    pointer = osp.join(fdir, "checkpoint")
    if osp.isfile(pointer):
        named = _pointer_target(fdir, pointer)
        if named:
            candidates.append(named)
    candidates += [name for name in _epoch_files(fdir) if name not in candidates]
    if not candidates:
        return None

    skipped = []
    for name in candidates:
        path = osp.join(fdir, name)
        try:
            state = load_checkpoint(path, trust=trust)
        except CorruptCheckpointError as error:
            warnings.warn(f"Skipping corrupt checkpoint: {error}", stacklevel=2)
            skipped.append(path)
            continue
        if skipped:
            print(f'Resuming from "{path}" because newer checkpoints are corrupt: {", ".join(skipped)}')
        return path, state
    raise CorruptCheckpointError(", ".join(skipped), "every checkpoint in the folder is unreadable; "
                                 "move the folder away to train from scratch")


# ---------------------------------------------------------------- RNG state
def capture_rng_state():
    """Generator states of torch (CPU and every CUDA device), numpy's global RNG and `random`.

    Only tensors, ints, floats and tuples, so it can be saved inside a checkpoint and loaded with
    `torch.load(weights_only=True)`.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_cached_gaussian = np.random.get_state()
    py_version, py_internal, py_gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached_gaussian),
        },
        "python": {"version": int(py_version), "internal": tuple(int(x) for x in py_internal),
                   "gauss_next": py_gauss_next},
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state):
    """Set the generators from a `capture_rng_state()` dict; libraries absent from it are left as they are."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if "numpy" in state:
        s = state["numpy"]
        keys = np.asarray(s["keys"].cpu().numpy() if isinstance(s["keys"], torch.Tensor) else s["keys"],
                          dtype=np.uint32)
        np.random.set_state((s["bit_generator"], keys, int(s["pos"]), int(s["has_gauss"]),
                             float(s["cached_gaussian"])))
    if "python" in state:
        s = state["python"]
        random.setstate((int(s["version"]), tuple(int(x) for x in s["internal"]), s["gauss_next"]))
    if "torch_cuda" in state and torch.cuda.is_available():
        saved = list(state["torch_cuda"])
        n_devices = torch.cuda.device_count()
        if len(saved) != n_devices:
            warnings.warn(f"The RNG state was saved with {len(saved)} CUDA device(s) and this run has "
                          f"{n_devices}; restoring the first {min(len(saved), n_devices)}", stacklevel=2)
        for device, s in enumerate(saved[:n_devices]):
            torch.cuda.set_rng_state(s.cpu().to(torch.uint8), device)
