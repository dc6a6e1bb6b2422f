"""Read the weights of a TorchScript archive (OpenAI's CLIP files) without running the archive.

`torch.jit.load` runs the program an archive carries: a scripted `__setstate__` executes while the
archive loads and can do anything TorchScript can (the security report behind this module
overwrote an unrelated file through `torch.from_file(..., shared=True)`). OpenAI's CLIP files, the
`~/.cache/clip/*.pt` every CoOp user has, are TorchScript archives, but their weights are plain
data, so this module reads them as data:

- `<archive>/data.pkl` pickles the module tree: each module is an object of a class named
  `__torch__.<path>.<Class>` whose state is a dict of its attributes (submodules, tensors,
  flags). It is read with an unpickler that resolves only inert record classes for those names,
  tensor rebuilding, storage types and `OrderedDict`; any other global refuses the file.
- tensors point, through persistent ids `('storage', <type>, <key>, <device>, <numel>)`, at raw
  bytes in `<archive>/data/<key>`;
- which attributes are parameters and buffers is declared in the class definitions under
  `<archive>/code/` (`__parameters__ = ["weight", "bias", ]`, `__buffers__ = [...]`), which are
  read as text, never compiled.

The result equals `torch.jit.load(path).state_dict()` (parameters and buffers of every submodule,
non-persistent buffers included, as TorchScript keeps them). An archive that needs its code to
rebuild its state (a class with its own `__setstate__`, a state that is not an attribute dict) or
that names any other global raises `NeedsCodeError`; the loader then refuses it unless the user
opted in (GATESCOPE_TRUST_WEIGHTS=1).
"""
import ast
import pickle
import re
import sys
import zipfile
from collections import OrderedDict

import torch

__all__ = ["NeedsCodeError", "read_torchscript_state_dict"]

# Storage classes a tensor's persistent id may name, and the dtype of their elements.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}
_CLASS_LINE = re.compile(r"^class (\w+)\(", re.M)
_DECLARATION = re.compile(r"^  (__parameters__|__buffers__) = (\[.*\])\s*$", re.M)
_SETSTATE = re.compile(r"^  def __setstate__\(", re.M)


class NeedsCodeError(Exception):
    """The archive's state cannot be rebuilt as plain data: loading it would run its code."""


class _StorageType:
    """Stands for `torch.<X>Storage` in a persistent id: only its element dtype matters."""

    def __init__(self, dtype):
        self.dtype = dtype


class _ScriptObject:
    """An inert record of one `__torch__.*` object: its class name and the state pickled for it."""

    qualified_name = ""

    def __init__(self, *args):
        self.state = None

    def __setstate__(self, state):  # what pickle's BUILD calls; only records the state
        self.state = state


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    """torch._utils._rebuild_tensor_v2 for data: a view of the storage's bytes (no hooks, no metadata)."""
    if backward_hooks:
        raise NeedsCodeError("a tensor carries backward hooks")
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _same_value(value, *_):
    return value


# torch.jit._pickle's helpers rebuild typed lists and tag values; as data they are the identity.
_JIT_PICKLE_HELPERS = {"build_intlist": list, "build_tensorlist": list, "build_doublelist": list,
                       "build_boollist": list, "build_tensor_from_id": _same_value,
                       "restore_type_tag": _same_value}


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix, source):
        super().__init__(file)
        self._archive, self._prefix, self._source = archive, prefix, source
        self._storages = {}
        self._classes = {}

    def find_class(self, module, name):
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                self._classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
            return self._classes[qualified]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch.jit._pickle" and name in _JIT_PICKLE_HELPERS:
            return _JIT_PICKLE_HELPERS[name]
        raise NeedsCodeError(f"its data.pkl names {module}.{name}, which is not plain tensor data")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise NeedsCodeError(f"a tensor refers to {pid!r}, not to a storage record")
        _, storage_type, key, _device, numel = pid
        if key not in self._storages:
            record = f"{self._prefix}/data/{key}"
            try:
                raw = bytearray(self._archive.read(record))
            except KeyError:
                raise ValueError(f"{self._source} lacks the tensor record {record}") from None
            dtype = storage_type.dtype
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != numel * itemsize:
                raise ValueError(f"{self._source}: record {record} holds {len(raw)} bytes, expected "
                                 f"{numel} x {itemsize}")
            self._storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self._storages[key]


def _class_declarations(archive, prefix, qualified_name):
    """(parameter names, buffer names, defines __setstate__) of a `__torch__.*` class, from its code."""
    module, _, class_name = qualified_name.rpartition(".")
    record = f"{prefix}/code/{module.replace('.', '/')}.py"
    try:
        source = archive.read(record).decode("utf-8")
    except KeyError:
        raise NeedsCodeError(f"the definition of {qualified_name} ({record}) is missing") from None
    starts = [(m.group(1), m.start()) for m in _CLASS_LINE.finditer(source)] + [("", len(source))]
    for (name, start), (_, end) in zip(starts, starts[1:]):
        if name == class_name:
            body = source[start:end]
            declared = {kind: ast.literal_eval(names) for kind, names in _DECLARATION.findall(body)}
            return (declared.get("__parameters__", []), declared.get("__buffers__", []),
                    bool(_SETSTATE.search(body)))
    raise NeedsCodeError(f"{record} does not define class {class_name}")


def read_torchscript_state_dict(path):
    """The parameters and buffers of TorchScript archive `path`, read as data (see module doc).

    Returns a dict name -> CPU tensor, equal to `torch.jit.load(path).state_dict()`.

    Raises:
        NeedsCodeError: the archive's state needs its code (or unknown globals) to be rebuilt.
        ValueError: the archive is damaged or not laid out as torch.jit.save writes archives.
    """
    source = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{source} is not a readable zip archive ({err})") from err
    with archive:
        roots = [name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(roots) != 1:
            raise ValueError(f"{source} has {len(roots)} top-level data.pkl records, expected 1")
        prefix = roots[0].rsplit("/", 1)[0]
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).decode().strip() != sys.byteorder:
            raise ValueError(f"{source} stores its tensors {archive.read(byteorder).decode().strip()}-endian; "
                             f"this machine is {sys.byteorder}-endian")
        try:
            with archive.open(roots[0]) as data:
                root = _ArchiveUnpickler(data, archive, prefix, source).load()
        except (NeedsCodeError, ValueError):
            raise
        except Exception as err:  # noqa: BLE001 - a damaged pickle raises many kinds of errors
            raise ValueError(f"{source}: cannot read {roots[0]} ({type(err).__name__}: {err})") from err
        if not isinstance(root, _ScriptObject):
            raise ValueError(f"{source}: data.pkl holds a {type(root).__name__}, not a TorchScript module")
        state_dict = {}
        _collect(root, "", archive, prefix, {}, state_dict, ())
        return state_dict


def _collect(obj, name_prefix, archive, prefix, declarations, out, ancestors):
    """Add the parameters and buffers of `obj` and its submodules to `out`, in state_dict order."""
    if id(obj) in ancestors:  # only a crafted pickle makes a module its own submodule
        raise ValueError(f"{archive.filename}: module {name_prefix.rstrip('.')} contains itself")
    ancestors = (*ancestors, id(obj))
    qualified = obj.qualified_name
    if qualified not in declarations:
        declarations[qualified] = _class_declarations(archive, prefix, qualified)
    parameters, buffers, has_setstate = declarations[qualified]
    if has_setstate:
        raise NeedsCodeError(f"class {qualified} rebuilds its state with its own __setstate__ code")
    if not isinstance(obj.state, dict):
        raise NeedsCodeError(f"the state of {qualified} is a {type(obj.state).__name__}, not its attributes")
    for attribute in (*parameters, *buffers):
        value = obj.state.get(attribute)
        if isinstance(value, torch.Tensor):
            out[name_prefix + attribute] = value
    for attribute, value in obj.state.items():
        if isinstance(value, _ScriptObject):
            _collect(value, f"{name_prefix}{attribute}.", archive, prefix, declarations, out, ancestors)
