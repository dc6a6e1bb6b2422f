"""The plumbing every gatescope package shares: atomic writes, JSON lines, forked RNGs.

One implementation of each, so that every file gatescope writes follows one rule and every
block that must not disturb the run's random numbers forks them the same way. It imports no
other gatescope module (only the standard library, numpy and torch), so trainers, gates,
diagnostics and third-party plugins all use it without an import cycle.

- `atomic_write_bytes` / `write_json_atomic`: a file is either its old content or all of the
  new one (temp file in the same folder, fsync, rename, fsync of the folder). The temp file of
  a write that was killed is removed by the next write of the same file, and
  `remove_stale_temp_files` clears a whole folder (a run's folder when the run starts).
- JSON lines (`read_jsonl`, `write_jsonl`, `append_jsonl`): one JSON object per line, strict
  JSON (NaN and Inf written as null). Policy for a damaged file: a torn *last* line (what a
  process killed in the middle of an append leaves) is dropped; a bad line anywhere else is
  not a torn write but a damaged file, and raises a ValueError naming the file and the line.
- `fork_rng(seed=None)`: run a block under its own RNG states (torch on the CPU and every CUDA
  device, numpy's global generator, python's `random`), optionally seeded, and give the caller
  back exactly the states it had.
"""
import contextlib
import hashlib
import json
import math
import os
import os.path as osp
import random
import re
import socket
import uuid

import numpy as np
import torch

__all__ = ["atomic_write_bytes", "write_json_atomic", "remove_stale_temp_files", "temp_path_for", "json_safe",
           "read_jsonl", "write_jsonl", "append_jsonl", "fork_rng"]


# ---------------------------------------------------------------- atomic writes
def _fsync_dir(dirname):
    # Make the rename itself durable; not possible on every platform (e.g. Windows), so best effort.
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host_tag():
    """8 hex digits naming this machine: a temp file's PID means something only on its own host
    (run folders and caches may sit on a file system shared by a cluster)."""
    return hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


# `.<name>.<pid>.<host tag><random>.tmp` (atomic_write_bytes; older versions wrote no host tag) and
# `.<name>.tmp-<pid>-<random>` (folders built whole and renamed into place, e.g. generated datasets).
_TEMP_FILE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.(?P<tag>[0-9a-f]{8}|[0-9a-f]{16})\.tmp$")
_TEMP_DIR = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})$")


def temp_path_for(path, kind="file"):
    """The hidden temp sibling in which `path` is built before it is renamed into place.

    `kind` "file": `.<name>.<pid>.<host tag><random>.tmp`; "dir": `.<name>.tmp-<pid>-<random>`.
    Both are recognised by `remove_stale_temp_files`, which removes them once their writer is gone.
    """
    path = os.fspath(path)
    dirname, name = osp.split(osp.abspath(path))
    if kind == "dir":
        return osp.join(dirname, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    return osp.join(dirname, f".{name}.{os.getpid()}.{_host_tag()}{uuid.uuid4().hex[:8]}.tmp")


def _writer_is_gone(pid, tag):
    """True when the process that made a temp file no longer runs (so the file is debris).

    Only decidable for a file made on this host (host tag in the name; files without one predate
    the tag and are taken as local). A PID that runs (any owner) or belongs to this process, or a
    file from another host, is kept.
    """
    if len(tag) == 16 and tag[:8] != _host_tag():
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    return False


def remove_stale_temp_files(dirname, target=None, any_writer=False):
    """Delete the temp files (and temp folders) interrupted writes left in `dirname`; returns their paths.

    A temp entry is removed when the process that made it is gone (see `_writer_is_gone`), or with
    `any_writer=True` whatever made it: only for a folder no other process may write, such as a
    run's folder while the run holds its lock. `target` limits it to the temp entries of that file
    name (what `atomic_write_bytes` clears before it writes the file again).
    """
    import shutil

    removed = []
    try:
        names = os.listdir(dirname)
    except OSError:
        return removed
    for name in names:
        if not name.startswith("."):
            continue
        match = _TEMP_FILE.match(name) or _TEMP_DIR.match(name)
        if match is None or (target is not None and match.group("target") != target):
            continue
        if not any_writer and not _writer_is_gone(int(match.group("pid")), match.group("tag")):
            continue
        path = osp.join(dirname, name)
        try:
            if osp.isdir(path) and not osp.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            continue  # another process cleaned it first
        except OSError:
            continue  # read-only folder: nothing to do about it here
        removed.append(path)
    return removed


def atomic_write_bytes(path, data, halfway=None):
    """Write `data` to `path` so that `path` holds either its old content or all of `data`.

    The bytes go to a hidden temp file (`temp_path_for(path)`) in the same folder (same file
    system, so the rename is atomic), are flushed and fsync'ed, then `os.replace`d onto `path`.
    A crash at any point leaves at worst that temp file, never a truncated `path`; the next write
    of `path` removes it (and `remove_stale_temp_files` clears a folder). `halfway`, when given,
    is called with half of the bytes written (the engine's kill-and-resume tests stop the
    process there).

    Raises OSError naming `path` itself (not the temp file) when the folder cannot be written
    (disk full, read-only, permission denied).
    """
    path = os.fspath(path)
    dirname = osp.dirname(osp.abspath(path))
    try:
        os.makedirs(dirname, exist_ok=True)
    except OSError as e:
        raise _naming(e, path) from e
    remove_stale_temp_files(dirname, target=osp.basename(path))
    tmp_path = temp_path_for(path)
    # os.open with mode 0o666 (not tempfile.mkstemp's 0o600) so the final file gets the usual
    # umask-based permissions and stays readable by collaborators.
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            if halfway is not None:
                f.flush()
                halfway()
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as error:
        if osp.exists(tmp_path):
            try:
                os.remove(tmp_path)
            except OSError:
                pass
        if isinstance(error, OSError) and error.errno is not None:
            raise _naming(error, path) from error
        raise
    _fsync_dir(dirname)


def _naming(error, path):
    """`error` (an OSError) re-made to name `path`: what a user must free, fix or delete."""
    if error.filename == path or error.errno is None:
        return error
    return type(error)(error.errno, error.strerror or os.strerror(error.errno), path)


def write_json_atomic(obj, path, indent=2):
    """Serialise `obj` as JSON and write it atomically (see `atomic_write_bytes`)."""
    text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=True)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


# ---------------------------------------------------------------- JSON lines
def json_safe(obj):
    """`obj` with non-finite floats replaced by None (JSON has no NaN) and dict keys as strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _line(record):
    return json.dumps(json_safe(record), allow_nan=False) + "\n"


def read_jsonl(path):
    """The records of a JSON-lines file ([] when it does not exist).

    A torn last line (cut off by a killed append: no newline at its end, or not valid JSON) is
    dropped; an invalid line followed by others raises ValueError naming the file and line number.
    """
    if not osp.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as error:
            rest = [other for other in lines[number:] if other.strip()]
            if not rest:  # the last line: a torn append
                break
            raise ValueError(f'"{path}" line {number} is not valid JSON ({error}) and is not the last line, so '
                             "it is not an interrupted append but a damaged file; repair or delete it") from error
    return records


def write_jsonl(path, records):
    """Replace `path` with `records`, one JSON object per line, atomically."""
    atomic_write_bytes(path, "".join(_line(r) for r in records).encode("utf-8"))


def append_jsonl(path, records):
    """Append `records` to `path` (created if missing) and fsync: after a crash the file holds every
    earlier line whole, and at worst a torn last line, which `read_jsonl` drops."""
    if not records:
        return
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(_line(r) for r in records))
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- RNG forking
@contextlib.contextmanager
def fork_rng(seed=None):
    """Run the block under forked RNG states; restore the caller's on exit (also on an exception).

    Forks torch's CPU generator and every CUDA device's, numpy's global generator and python's
    `random`. With `seed` (an int), all of them are seeded with it inside the block (numpy with
    seed mod 2**32), so the block draws the same numbers wherever it runs.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            if seed is not None:
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2 ** 32)
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
