"""Which files may run code when gatescope reads them, and how a user says they trust one.

Python's pickle (and so `torch.load(weights_only=False)`) can call any function a file names, and
TorchScript archives carry a program that `torch.jit.load` runs. gatescope therefore reads every
file it is pointed at without running anything from it: checkpoints and weights with
`torch.load(weights_only=True)` (plain tensors and containers only), OpenAI's TorchScript archives
with a restricted reader (`trainers/backbone/torchscript.py`), config files as YAML with yaml's safe
loader, its own caches with unpicklers that resolve only the classes they hold. A file that needs
more than that is refused, naming the file and the opt-in for users who trust where it came from:

    GATESCOPE_TRUST_CHECKPOINTS=1   training checkpoints (`--resume`, `--model-dir`): e.g. those of
                                    the original Dassl, which pickle its scheduler object;
    GATESCOPE_TRUST_WEIGHTS=1       backbone weights (`MODEL.BACKBONE.PRETRAINED`): pickled weight
                                    files and TorchScript archives that need their code to load.

The scan below lists the globals (functions and classes) a pickle names, by reading its opcodes,
never by unpickling it, so a refusal can say what the file would have run.
"""
import io
import os
import pickletools
import re
import zipfile

import torch

__all__ = ["TRUST_CHECKPOINTS_ENV", "TRUST_WEIGHTS_ENV", "trusted_by_env", "PickleScan", "scan_pickles",
           "is_torchscript_archive", "describe_load_failure"]

TRUST_CHECKPOINTS_ENV = "GATESCOPE_TRUST_CHECKPOINTS"
TRUST_WEIGHTS_ENV = "GATESCOPE_TRUST_WEIGHTS"
_TRUE = ("1", "true", "yes", "on")

# torch.save's pre-1.6 format starts with this number, pickled (torch.serialization.MAGIC_NUMBER).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# A legacy file holds five pickles (magic, protocol, sys info, the object, storage keys), then raw
# tensor bytes that must not be scanned as opcodes.
_LEGACY_PICKLES = 5
_IDENTIFIER = re.compile(r"^[A-Za-z_][\w.]*$")


def trusted_by_env(variable):
    """True when environment variable `variable` is set to 1/true/yes/on."""
    return os.environ.get(variable, "").strip().lower() in _TRUE


def is_torchscript_archive(path):
    """Whether `path` is a TorchScript archive (`torch.jit.save`), not a `torch.save` file.

    Both are zip files; only TorchScript's records include `code/` (the serialized program) and
    `constants.pkl`.
    """
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(part in ("code", "constants.pkl")
                       for member in archive.namelist() for part in member.split("/")[1:2])
    except (OSError, zipfile.BadZipFile):
        return False


def describe_load_failure(error):
    """torch.load's complaint about a file in a few words, for a message that names the file.

    Its weights_only advice (re-run with weights_only=False) is left out: for a file whose scan
    found nothing unsafe the cause is damage, and the advice would be wrong.
    """
    text = str(error).strip()
    if "Weights only load failed" in text:
        return f"{type(error).__name__}: torch.load found no complete checkpoint in it"
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no detail'}"


class PickleScan:
    """What a file's pickles name, read from their opcodes without unpickling.

    Attributes:
        kind: "zip" (torch.save since 1.6), "torch-legacy" (torch.save before 1.6), "pickle" (a file
            written with pickle.dump), or "unreadable".
        globals: "module.name" of every global the pickles name, in order of first appearance;
            "<dynamic global>" where a name is computed on the unpickler's stack, "<extension N>"
            for copyreg extension codes.
        unsafe: those of `globals` that `torch.load(weights_only=True)` does not allow.
    """

    def __init__(self, kind, found):
        self.kind = kind
        self.globals = list(dict.fromkeys(found))
        allowed = _weights_only_allowed()
        self.unsafe = [name for name in self.globals if name not in allowed]

    def __repr__(self):
        return f"PickleScan(kind={self.kind!r}, globals={self.globals!r})"


def scan_pickles(path):
    """The `PickleScan` of file `path`; a file that is not a pickle gives kind "unreadable"."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                found = []
                for member in archive.namelist():
                    if member.endswith(".pkl"):
                        found += _globals_in_stream(io.BytesIO(archive.read(member)), max_pickles=1)[0]
                return PickleScan("zip", found)
        with open(path, "rb") as f:
            found, first_value = _globals_in_stream(f, max_pickles=1)
            if first_value == _LEGACY_MAGIC:
                found += _globals_in_stream(f, max_pickles=_LEGACY_PICKLES - 1)[0]
                return PickleScan("torch-legacy", found)
            return PickleScan("pickle" if found or first_value is not _UNREADABLE else "unreadable", found)
    except Exception:  # noqa: BLE001 - a damaged zip raises zlib, zipfile and OS errors alike
        return PickleScan("unreadable", [])


_UNREADABLE = object()
_UNKNOWN = object()
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
               "BINUNICODE8"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_INT_OPS = {"INT", "LONG", "LONG1", "LONG4", "BININT", "BININT1", "BININT2"}


def _globals_in_stream(stream, max_pickles):
    """(globals named, value of the first pickle if it is a lone int/str else a marker) for up to
    `max_pickles` consecutive pickles read from `stream`. Stops quietly at the first byte that is
    not a pickle opcode: a truncated file yields what its readable part names."""
    found = []
    first_value = _UNREADABLE
    for index in range(max_pickles):
        memo, recent, ops = {}, [], 0
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                ops += 1
                name = opcode.name
                if name in ("GLOBAL", "INST"):
                    module, _, attr = str(arg).partition(" ")
                    found.append(_global_name(module, attr))
                elif name == "STACK_GLOBAL":
                    module, attr = recent[-2:] if len(recent) == 2 else (_UNKNOWN, _UNKNOWN)
                    found.append(_global_name(module, attr))
                elif name.startswith("EXT"):
                    found.append(f"<extension {arg}>")
                # Track the last two values pushed (strings and ints by value), enough to name the
                # module and attribute a STACK_GLOBAL pops, also when they come from the memo.
                if name == "MEMOIZE":
                    memo[len(memo)] = recent[-1] if recent else _UNKNOWN
                elif name in _PUT_OPS:
                    memo[arg] = recent[-1] if recent else _UNKNOWN
                elif name in _GET_OPS:
                    recent.append(memo.get(arg, _UNKNOWN))
                elif name in _STRING_OPS:
                    recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
                elif name in _INT_OPS:
                    recent.append(arg)
                elif name not in ("PROTO", "FRAME", "STOP"):
                    recent.append(_UNKNOWN)
                del recent[:-2]
        except Exception:  # noqa: BLE001 - pickletools raises ValueError and others on bad bytes
            if index == 0 and ops == 0:
                return found, _UNREADABLE
            break
        if index == 0:
            first_value = recent[-1] if ops <= 3 and recent else _UNKNOWN
    return found, first_value


# Pickle protocols 0-2 name Python 3 modules by their Python 2 names.
_PYTHON2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _global_name(module, attr):
    module = _PYTHON2_MODULES.get(module, module)
    if isinstance(module, str) and isinstance(attr, str) and _IDENTIFIER.match(module) and _IDENTIFIER.match(attr):
        return f"{module}.{attr}"
    return "<dynamic global>"


def _weights_only_allowed():
    """Names of the globals `torch.load(weights_only=True)` accepts (torch's list and the user's)."""
    allowed = set()
    try:
        from torch import _weights_only_unpickler

        allowed |= set(_weights_only_unpickler._get_allowed_globals())
        allowed |= set(_weights_only_unpickler._get_user_allowed_globals())
    except (ImportError, AttributeError):
        # A torch without those private helpers: the tensor-rebuilding basics every checkpoint uses.
        allowed |= {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                    "torch.Size", "torch.device"}
        allowed |= {f"torch.{name}" for name in dir(torch) if name.endswith("Storage")}
    return allowed
